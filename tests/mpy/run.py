# Minimal test runner for the MicroPython unix port (no pytest there).
# Usage, from the repository root:  micropython tests/mpy/run.py [module ...]
# Each module tests/mpy/test_*.py defines plain `test_*` functions that use assert.
# Prints one line per test and closes with "N passed, N failed"; exit status 1 on failure.
import os
import sys

sys.path.insert(0, ".")
sys.path.insert(0, "tests/mpy")


def _modules(argv):
    if len(argv) > 1:
        return [a.split("/")[-1].replace(".py", "") for a in argv[1:]]
    names = [n[:-3] for n in os.listdir("tests/mpy") if n.startswith("test_") and n.endswith(".py")]
    names.sort()
    return names


def main():
    passed = 0
    failed = 0
    for modname in _modules(sys.argv):
        mod = __import__(modname)
        names = [n for n in dir(mod) if n.startswith("test_")]
        names.sort()
        for name in names:
            fn = getattr(mod, name)
            try:
                fn()
                passed += 1
                print("PASS %s.%s" % (modname, name))
            except Exception as exc:  # report every failure, keep going
                failed += 1
                print("FAIL %s.%s: %s %s" % (modname, name, type(exc).__name__, exc))
                sys.print_exception(exc)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or not passed else 0)


main()
