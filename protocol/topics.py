"""MQTT topic names: the one place that spells them.

Layout (docs/protocol.md explains why):
    vb/v1/gw/<gateway>/up/<kind>[/<device>]     gateway -> centre (gateway may publish only here)
    vb/v1/gw/<gateway>/down/<kind>              centre -> gateway (gateway may only subscribe here)
The broker ACL grants each gateway `write vb/v1/gw/%u/up/#` and `read vb/v1/gw/%u/down/#`, so a
gateway can neither publish into another's subtree nor forge its own receipts or commands.
"""

from protocol.errors import ValidationError

ROOT = "vb/v1/gw"

# gateway -> centre
UP_READINGS = "readings"      # per device: sealed SenML batches
UP_CHECKPOINT = "checkpoint"  # per device: signed hash-chain checkpoints
UP_ALARM = "alarm"            # one alarm transition (priority path)
UP_ALARMS = "alarms"          # retained: the active alarm set
UP_STATUS = "status"          # retained, also the last-will
UP_EVENT = "event"            # registry, key and certificate events
UP_KINDS = (UP_READINGS, UP_CHECKPOINT, UP_ALARM, UP_ALARMS, UP_STATUS, UP_EVENT)
PER_DEVICE_KINDS = (UP_READINGS, UP_CHECKPOINT)

# centre -> gateway
DOWN_RECEIPT = "receipt"      # application receipts (correlation data = reading hash)
DOWN_LIMITS = "limits"        # signed per-patient limit commands
DOWN_ALARM_ACK = "alarm-ack"  # acknowledgements / closures from the centre
DOWN_COMMAND = "command"      # other signed commands (e.g. compromise notices)
DOWN_KINDS = (DOWN_RECEIPT, DOWN_LIMITS, DOWN_ALARM_ACK, DOWN_COMMAND)

CENTRE_SHARE_GROUP = "centre"
_MAX_ID = 64
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."


def check_id(what, ident):
    """Gateway and device ids become topic levels: keep them short and free of MQTT wildcards."""
    if not isinstance(ident, str) or not ident:
        raise ValidationError(what, "must be a non-empty string")
    if len(ident) > _MAX_ID:
        raise ValidationError(what, "longer than %d characters" % _MAX_ID)
    for ch in ident:
        if ch not in _ID_CHARS:
            raise ValidationError(what, "character %r not allowed (letters, digits, - _ .)" % ch)
    return ident


def up(gateway, kind, device=None):
    check_id("gateway", gateway)
    if kind not in UP_KINDS:
        raise ValidationError("kind", "unknown upstream kind %r" % kind)
    topic = "%s/%s/up/%s" % (ROOT, gateway, kind)
    if kind in PER_DEVICE_KINDS:
        return topic + "/" + check_id("device", device)
    if device is not None:
        raise ValidationError("device", "kind %r is not per device" % kind)
    return topic


def down(gateway, kind):
    check_id("gateway", gateway)
    if kind not in DOWN_KINDS:
        raise ValidationError("kind", "unknown downstream kind %r" % kind)
    return "%s/%s/down/%s" % (ROOT, gateway, kind)


def gateway_down_filter(gateway):
    """What a gateway subscribes to."""
    return "%s/%s/down/#" % (ROOT, check_id("gateway", gateway))


def centre_up_filter(shared=True):
    """What the monitoring centre subscribes to: every gateway's upstream, load-shared."""
    flt = ROOT + "/+/up/#"
    if shared:
        return "$share/%s/%s" % (CENTRE_SHARE_GROUP, flt)
    return flt


def parse(topic):
    """Split a VitalBridge topic into (gateway, direction, kind, device-or-None)."""
    if not isinstance(topic, str):
        raise ValidationError("topic", "must be a string")
    prefix = ROOT + "/"
    if not topic.startswith(prefix):
        raise ValidationError("topic", "not under %s/" % ROOT)
    parts = topic[len(prefix):].split("/")
    if len(parts) < 3:
        raise ValidationError("topic", "too few levels in %r" % topic)
    gateway, direction, kind = parts[0], parts[1], parts[2]
    check_id("gateway", gateway)
    rest = parts[3:]
    if direction == "up":
        if kind not in UP_KINDS:
            raise ValidationError("topic", "unknown upstream kind %r" % kind)
        if kind in PER_DEVICE_KINDS:
            if len(rest) != 1:
                raise ValidationError("topic", "kind %r needs exactly one device level" % kind)
            return gateway, direction, kind, check_id("device", rest[0])
    elif direction == "down":
        if kind not in DOWN_KINDS:
            raise ValidationError("topic", "unknown downstream kind %r" % kind)
    else:
        raise ValidationError("topic", "direction must be up or down, not %r" % direction)
    if rest:
        raise ValidationError("topic", "unexpected levels after %r" % kind)
    return gateway, direction, kind, None
