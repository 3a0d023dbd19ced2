"""BLE GATT layout shared by the firmware (peripheral) and the edge agent (central).

Two parts (docs/ble-ingest.md):

1. The VitalBridge firmware service, a 128-bit vendor service:

    uplink        notify  device -> gateway. Each value is ONE fragment
                          (protocol.fragments) of a protocol.messages message: hello,
                          sealed, checkpoint, enroll-request, device-event...
    downlink      write   gateway -> device, write with response. Each value is one
                          fragment of a message: accept, device-ack, device-command,
                          certificate. Fragment size follows the ATT MTU.
    provisioning  read    one whole protocol.messages "device-event" message (at most
                          512 bytes, unfragmented), unsealed, named "identity", whose
                          details say who the device is and whether it is in
                          provisioning mode. It is a hint for commissioning, never proof:
                          identity is proven by the enrollment request and the session.

   Each direction has its own rolling message-id counter; one Reassembler per connection
   and direction, reset when the link drops.

2. The Bluetooth SIG 16-bit UUIDs of the standard health services and characteristics
   the agent subscribes to and the simulator (and firmware) expose.

Property bits are the GATT characteristic properties (Core Vol 3 Part G 3.3.1.1); they
have the same values as MicroPython's bluetooth.FLAG_* constants, so the firmware can
pass them straight to gatts_register_services. Runs on MicroPython: constants and two
small pure helpers only.
"""

# --- UUID helpers ------------------------------------------------------------

BLUETOOTH_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


def sig_uuid(uuid16: int) -> str:
    """Full 128-bit text form of a SIG 16-bit UUID: 0x180D -> '0000180d-0000-1000-...'."""
    if not isinstance(uuid16, int) or isinstance(uuid16, bool) or not 0 <= uuid16 <= 0xFFFF:
        raise ValueError("not a 16-bit UUID: %r" % (uuid16,))
    return "%08x%s" % (uuid16, BLUETOOTH_BASE_UUID_SUFFIX)


def uuid16_of(uuid_text):
    """The 16-bit value of a SIG UUID in text form (any case), or None for other UUIDs."""
    if not isinstance(uuid_text, str):
        return None
    text = uuid_text.lower()
    if len(text) == 4:
        text = "0000" + text + BLUETOOTH_BASE_UUID_SUFFIX
    if len(text) != 36 or text[:4] != "0000" or text[8:] != BLUETOOTH_BASE_UUID_SUFFIX:
        return None
    try:
        return int(text[4:8], 16)
    except ValueError:
        return None


# --- GATT characteristic properties --------------------------------------------

PROP_READ = 0x02
PROP_WRITE_NO_RESPONSE = 0x04
PROP_WRITE = 0x08
PROP_NOTIFY = 0x10
PROP_INDICATE = 0x20

CCCD = 0x2902  # Client Characteristic Configuration descriptor
CCCD_NOTIFY = 0x0001
CCCD_INDICATE = 0x0002

# --- VitalBridge firmware service ----------------------------------------------

SERVICE_UUID = "c7fc0001-0623-4edf-ba49-112648f320cf"
UPLINK_UUID = "c7fc0002-0623-4edf-ba49-112648f320cf"
DOWNLINK_UUID = "c7fc0003-0623-4edf-ba49-112648f320cf"
PROVISIONING_UUID = "c7fc0004-0623-4edf-ba49-112648f320cf"

# (uuid, properties) in declaration order; the firmware registers exactly these.
CHARACTERISTICS = (
    (UPLINK_UUID, PROP_NOTIFY),
    (DOWNLINK_UUID, PROP_WRITE),
    (PROVISIONING_UUID, PROP_READ),
)

MAX_PROVISIONING_VALUE = 512  # longest attribute value (Core Vol 3 Part F 3.2.9)

# The provisioning characteristic's "identity" device-event and its detail keys.
IDENTITY_EVENT = "identity"
IDENTITY_DEVICE = "device"  # device id (text), "" while unenrolled
IDENTITY_MODEL = "model"
IDENTITY_SERIAL = "serial"
IDENTITY_FIRMWARE = "firmware"
IDENTITY_MODE = "mode"
MODE_PROVISIONING = "provisioning"
MODE_ENROLLED = "enrolled"


def identity_event(device_id, model, serial, firmware, mode, time):
    """The event dict (protocol.device_link.encode_event form) the provisioning
    characteristic carries; wrap it with messages.encode("device-event", ...)."""
    if mode not in (MODE_PROVISIONING, MODE_ENROLLED):
        raise ValueError("mode must be %r or %r" % (MODE_PROVISIONING, MODE_ENROLLED))
    return {
        "event": IDENTITY_EVENT,
        "time": time,
        IDENTITY_DEVICE: device_id,
        IDENTITY_MODEL: model,
        IDENTITY_SERIAL: serial,
        IDENTITY_FIRMWARE: firmware,
        IDENTITY_MODE: mode,
    }


# --- Bluetooth SIG services (Assigned Numbers, 16-bit UUIDs) --------------------

GLUCOSE_SERVICE = 0x1808
HEALTH_THERMOMETER_SERVICE = 0x1809
DEVICE_INFORMATION_SERVICE = 0x180A
HEART_RATE_SERVICE = 0x180D
BATTERY_SERVICE = 0x180F
BLOOD_PRESSURE_SERVICE = 0x1810
WEIGHT_SCALE_SERVICE = 0x181D
PULSE_OXIMETER_SERVICE = 0x1822

SERVICES = {
    GLUCOSE_SERVICE: "glucose",
    HEALTH_THERMOMETER_SERVICE: "health_thermometer",
    DEVICE_INFORMATION_SERVICE: "device_information",
    HEART_RATE_SERVICE: "heart_rate",
    BATTERY_SERVICE: "battery",
    BLOOD_PRESSURE_SERVICE: "blood_pressure",
    WEIGHT_SCALE_SERVICE: "weight_scale",
    PULSE_OXIMETER_SERVICE: "pulse_oximeter",
}

# --- Bluetooth SIG characteristics ----------------------------------------------

GLUCOSE_MEASUREMENT = 0x2A18
BATTERY_LEVEL = 0x2A19
TEMPERATURE_MEASUREMENT = 0x2A1C
TEMPERATURE_TYPE = 0x2A1D
MEASUREMENT_INTERVAL = 0x2A21
MODEL_NUMBER = 0x2A24
SERIAL_NUMBER = 0x2A25
FIRMWARE_REVISION = 0x2A26
MANUFACTURER_NAME = 0x2A29
GLUCOSE_MEASUREMENT_CONTEXT = 0x2A34
BLOOD_PRESSURE_MEASUREMENT = 0x2A35
HEART_RATE_MEASUREMENT = 0x2A37
BODY_SENSOR_LOCATION = 0x2A38
HEART_RATE_CONTROL_POINT = 0x2A39
BLOOD_PRESSURE_FEATURE = 0x2A49
GLUCOSE_FEATURE = 0x2A51
RECORD_ACCESS_CONTROL_POINT = 0x2A52
PLX_SPOT_CHECK_MEASUREMENT = 0x2A5E
PLX_CONTINUOUS_MEASUREMENT = 0x2A5F
PLX_FEATURES = 0x2A60
WEIGHT_MEASUREMENT = 0x2A9D
WEIGHT_SCALE_FEATURE = 0x2A9E

CHARACTERISTIC_NAMES = {
    GLUCOSE_MEASUREMENT: "glucose_measurement",
    BATTERY_LEVEL: "battery_level",
    TEMPERATURE_MEASUREMENT: "temperature_measurement",
    TEMPERATURE_TYPE: "temperature_type",
    MEASUREMENT_INTERVAL: "measurement_interval",
    MODEL_NUMBER: "model_number",
    SERIAL_NUMBER: "serial_number",
    FIRMWARE_REVISION: "firmware_revision",
    MANUFACTURER_NAME: "manufacturer_name",
    GLUCOSE_MEASUREMENT_CONTEXT: "glucose_measurement_context",
    BLOOD_PRESSURE_MEASUREMENT: "blood_pressure_measurement",
    HEART_RATE_MEASUREMENT: "heart_rate_measurement",
    BODY_SENSOR_LOCATION: "body_sensor_location",
    HEART_RATE_CONTROL_POINT: "heart_rate_control_point",
    BLOOD_PRESSURE_FEATURE: "blood_pressure_feature",
    GLUCOSE_FEATURE: "glucose_feature",
    RECORD_ACCESS_CONTROL_POINT: "record_access_control_point",
    PLX_SPOT_CHECK_MEASUREMENT: "plx_spot_check_measurement",
    PLX_CONTINUOUS_MEASUREMENT: "plx_continuous_measurement",
    PLX_FEATURES: "plx_features",
    WEIGHT_MEASUREMENT: "weight_measurement",
    WEIGHT_SCALE_FEATURE: "weight_scale_feature",
}

# ATT application error codes defined by the Glucose Service 1.0 that a RACP write may
# be refused with. Newer services use the CSS codes 0xFE / 0xFD instead.
GLS_PROCEDURE_ALREADY_IN_PROGRESS = 0x80
GLS_CCCD_IMPROPERLY_CONFIGURED = 0x81
