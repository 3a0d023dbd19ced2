"""Links between the device and its gateway (docs/firmware-transports.md).

    firmware.transport.base   Transport interface, TransportDown, link-liveness rule
    firmware.transport.uart   protocol.frames over a HAL UART (USB/serial cable)
    firmware.transport.ble    GATT peripheral: standard HR/PLX/HTS + VitalBridge service
    firmware.transport.mqtt   experimental: umqtt.simple over Wi-Fi straight to a broker

Submodules are imported on demand: a board without a radio never loads ble.py.
"""
