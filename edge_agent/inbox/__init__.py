"""The agent's inbox: how a technician's or clinician's command reaches the running agent
without a network surface (docs/manual-entry.md). store.py is the file both sides open,
entries.py the body schemas, consumer.py the agent's polling loop, agent.py its handlers."""

from edge_agent.inbox.consumer import InboxConsumer, Refused
from edge_agent.inbox.entries import DEVICE_COMPROMISED, KINDS, MANUAL_READING
from edge_agent.inbox.store import ACCEPTED, FILE_NAME, REFUSED, Entry, InboxStore

__all__ = [
    "ACCEPTED",
    "DEVICE_COMPROMISED",
    "FILE_NAME",
    "KINDS",
    "MANUAL_READING",
    "REFUSED",
    "Entry",
    "InboxConsumer",
    "InboxStore",
    "Refused",
]
