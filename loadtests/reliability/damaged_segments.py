"""A torn segment tail and a corrupt sealed segment, left by a crash and by bit rot.

The gateway runs under load without a sidecar, with small segments, and is killed (-9). Then
the open segment it left gets half a record appended (what a power cut mid-write leaves), and
one sealed segment gets a byte of its last record's checksum flipped. The gateway is started
again (it cuts the torn tail at start, counting it), then the sidecar (it quarantines the
corrupt segment and ships the rest), load going on. Every answered exchange must be in the
store, or in the quarantined segment (set aside for a person, not lost), and nothing twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ledger import frame_offsets, read_store, segment_ids
from mix import Mix
from procs import metric
from scenario import Context, Scenario, judge, wind_down, world
from traffic import Traffic
from verdict import Result

from core.segment import HEADER, OPEN_SUFFIX, sealed_segments

NAME = "damaged-segments"


def tear(segment: Path) -> None:
    """Append half a record: a header promising 1,000 bytes, then 100 of them."""
    with segment.open("ab") as fh:
        fh.write(HEADER.pack(1000, 0) + b'{"request_id": "torn' + b"x" * 80)


def corrupt(segment: Path) -> None:
    """Flip one bit of the last record's checksum (its payload stays readable)."""
    offset = frame_offsets(segment)[-1] + 4  # the crc32 follows the u32 length
    with segment.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        config = ws.write_config(
            teacher.base_url, spool={"segment_max_bytes": 64 * 1024, "segment_max_age_s": 0.5}
        )
        gateway = await ws.start_gateway(config)
        traffic = Traffic(ws.gateway_url, Mix(seed=4), rate=ctx.rate)
        async with traffic.running():
            await traffic.baseline(ctx.seconds(4))
            traffic.phase = "during"
            await ws.kill(gateway)
            opened = sorted(ws.spool.glob("*" + OPEN_SUFFIX))
            sealed = sealed_segments(ws.spool)
            if opened:
                tear(opened[-1])
            victim = sealed[len(sealed) // 2]
            corrupt(victim)
            gateway = await ws.start_gateway(config)
            sidecar = await ws.start_sidecar(config)
            await traffic.hold("after", ctx.seconds(4))
            gateway_page = await ws.scrape(ws.gateway_url)
            sidecar_page = await ws.scrape(ws.sidecar_url)
        await wind_down(result, ws, gateway, sidecar)
        quarantined = sorted((ws.spool / "quarantine").glob("*"))
        aside = [rid for path in quarantined for rid in segment_ids(path)]
        view = await asyncio.to_thread(read_store, ws.store_uri)
    judge(result, traffic, view, "after", elsewhere=aside)
    torn = metric(gateway_page, "protege_spool_torn_records_total") + metric(
        sidecar_page, "protege_spool_torn_records_total"
    )
    result.check("an open segment was left to tear", bool(opened), f"{len(opened)} open")
    result.check("the torn tail is cut and counted", torn == 1, f"{torn:.0f} torn records")
    names = [p.name for p in quarantined]
    result.check(
        "the corrupt segment is quarantined, alone",
        names == [victim.name] and metric(sidecar_page, "protege_quarantined_segments_total") == 1,
        f"quarantine holds {names}",
    )
    t = result.tally
    assert t is not None
    result.notes.append(
        f"{len(sealed)} sealed segments at the kill; {len(aside)} records set aside in quarantine,"
        f" {t.set_aside} of them answered to clients"
    )
    return result


SCENARIO = Scenario(NAME, "a torn open segment and a corrupt sealed one after kill -9", run)
