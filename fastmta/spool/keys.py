"""Key layouts of the spool databases (big-endian, so byte order = numeric order).

- ``rcpt``   did:u32 rid:u32                      -> Rcpt
- ``ready``  shard:u16 -> did:u32 rid:u32, sorted duplicates (DUPFIXED, 8 bytes):
             a shard's FIFO is one key's duplicate list
- ``sched``  shard:u16 -> due_ms:u64 did:u32 rid:u32 (DUPFIXED, 16 bytes): per shard,
             ordered by due time
- ``lease``  did:u32 rid:u32                      -> Lease
- ``seen``   did:u32 -> blake2b64(address), sorted duplicates (DUPFIXED), dedupe
- ``kpi``    did:u32 name:utf8                    -> i64
- ``events`` seq:u64                              -> Event
- ``deliveries`` did:u32 -> DeliveryRecord; ``templates`` did:u32 -> bytes
- ``quarantine`` address (lower-case, or ``@domain``) -> QuarantineEntry
"""

from __future__ import annotations

import struct

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_RCPT = struct.Struct(">II")
_SCHED = struct.Struct(">QII")

pack_u16 = _U16.pack
pack_u32 = _U32.pack
unpack_u32 = _U32.unpack
pack_u64 = _U64.pack
unpack_u64 = _U64.unpack
pack_i64 = _I64.pack
unpack_i64 = _I64.unpack
pack_rcpt = _RCPT.pack
unpack_rcpt = _RCPT.unpack
shard_key = _U16.pack
pack_ready = _RCPT.pack  # value in ``ready``: (did, rid)
unpack_ready = _RCPT.unpack
pack_sched = _SCHED.pack  # value in ``sched``: (due_ms, did, rid)
unpack_sched = _SCHED.unpack
MAX_SHARD = 0xFFFF
