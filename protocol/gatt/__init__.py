"""Bluetooth SIG GATT health characteristics: exact codecs (see docs/gatt.md).

  ieee11073        SFLOAT / FLOAT decimal floats and their special values
  fields           bounds-checked reader, packers, Date Time, measurement entries
  characteristics  heart rate, temperature, blood pressure, PLX, weight; registry
  glucose          glucose measurement and the Record Access Control Point

Sub-modules are imported explicitly, so firmware that only encodes heart rate,
temperature and PLX never loads the decoders it does not need.
"""
