"""The broker helper starts a real mosquitto that accepts an MQTT 5 QoS 1 round trip."""

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulator.broker import Broker


def test_real_mosquitto_round_trip(tmp_path: Path) -> None:
    with Broker(tmp_path) as broker:
        got = threading.Event()
        received: list[bytes] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            received.append(msg.payload)
            got.set()

        client.on_message = on_message
        client.connect("127.0.0.1", broker.port)
        client.subscribe("t/#", qos=1)
        client.loop_start()
        info = client.publish("t/x", b"\x01\x02", qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
        assert got.wait(5)
        client.loop_stop()
        client.disconnect()
        assert received == [b"\x01\x02"]
    assert broker.process is None
