"""Wire protocol: topics from typed identities, envelopes, the msgpack codec."""

from orchestrator.protocol.codec import Envelope, SeqTracker, Sequencer, decode, encode
from orchestrator.protocol.topics import PROTOCOL_VERSION, ClientId, PartId, Topics, topic_matches

__all__ = [
    "PROTOCOL_VERSION",
    "ClientId",
    "Envelope",
    "PartId",
    "SeqTracker",
    "Sequencer",
    "Topics",
    "decode",
    "encode",
    "topic_matches",
]
