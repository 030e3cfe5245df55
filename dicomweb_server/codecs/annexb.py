"""Presentation order of an H.264 or HEVC elementary stream (Annex B byte stream).

A raw elementary stream carries no timestamps: to remux it into MP4 without decoding, the
composition time of each access unit comes from its picture order count (POC), read from
the parameter sets and the first slice header (H.264 8.2.1, H.265 8.3.1). Only the few
fields on the way to `pic_order_cnt_lsb` are parsed. Not handled, with their effect: H.264
POC type 1 and memory_management_control_operation 5 (the order then falls back to decode
order within the run), field pictures stored as separate access units (each becomes a sample).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["AccessUnit", "H264Order", "HevcOrder", "iter_nal_units", "presentation_ranks"]

_START_CODE = re.compile(b"\x00\x00\x01")
_EMULATION = re.compile(b"\x00\x00\x03")
# H.264 profiles whose SPS carries chroma_format_idc and bit depths (7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def iter_nal_units(data: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B chunk, without start codes or trailing zero bytes."""
    starts = [m.end() for m in _START_CODE.finditer(data)]
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        unit = data[start:end].rstrip(b"\x00")
        if unit:
            yield unit


def _rbsp(unit: bytes, header: int, limit: int = 512) -> bytes:
    """The first `limit` bytes of a NAL unit's payload with emulation prevention removed."""
    return _EMULATION.sub(b"\x00\x00", unit[header : header + limit])


class _Bits:
    """An MSB-first bit reader with Exp-Golomb codes (H.264 9.1)."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def u(self, n: int) -> int:
        if n > self.left:
            raise ValueError("bit stream ends inside a header")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """One access unit's place in presentation: `run` counts IDR/IRAP resets, `poc` orders
    pictures within a run (decode order when the stream does not say)."""

    run: int
    poc: int
    keyframe: bool


def presentation_ranks(units: list[AccessUnit]) -> list[int]:
    """Each access unit's presentation index (0-based), from decode-ordered `units`."""
    order = sorted(range(len(units)), key=lambda i: (units[i].run, units[i].poc, i))
    ranks = [0] * len(units)
    for rank, index in enumerate(order):
        ranks[index] = rank
    return ranks


@dataclass(slots=True)
class _H264Sps:
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int
    frame_mbs_only: bool
    separate_colour_plane: bool


@dataclass(slots=True)
class H264Order:
    """Feeds H.264 access units in decode order; `units` gets one `AccessUnit` per call."""

    units: list[AccessUnit] = field(default_factory=list)
    _sps: dict[int, _H264Sps] = field(default_factory=dict)
    _pps: dict[int, tuple[int, bool]] = field(default_factory=dict)  # id → (sps id, bottom)
    _run: int = -1
    _count: int = 0
    _prev_msb: int = 0
    _prev_lsb: int = 0

    def feed(self, access_unit: bytes) -> None:
        """Parameter sets update the tables; the first slice gives the unit's POC."""
        for unit in iter_nal_units(access_unit):
            kind = unit[0] & 0x1F
            if kind == 7:
                self._read_sps(_Bits(_rbsp(unit, 1)))
            elif kind == 8:
                self._read_pps(_Bits(_rbsp(unit, 1)))
            elif kind in (1, 5):
                self.units.append(self._slice(unit, kind == 5))
                return
        self.units.append(AccessUnit(max(self._run, 0), self._next_count(), False))

    def _next_count(self) -> int:
        self._count += 1
        return self._count

    def _read_sps(self, bits: _Bits) -> None:
        profile = bits.u(8)
        bits.u(16)  # constraint flags, level_idc
        sps_id = bits.ue()
        separate = False
        if profile in _HIGH_PROFILES:
            chroma = bits.ue()
            if chroma == 3:
                separate = bool(bits.u(1))
            bits.ue()  # bit_depth_luma_minus8
            bits.ue()  # bit_depth_chroma_minus8
            bits.u(1)  # qpprime_y_zero_transform_bypass_flag
            if bits.u(1):  # seq_scaling_matrix_present_flag
                for i in range(8 if chroma != 3 else 12):
                    if bits.u(1):
                        _skip_scaling_list(bits, 16 if i < 6 else 64)
        log2_max_frame_num = bits.ue() + 4
        poc_type = bits.ue()
        log2_max_poc_lsb = 0
        if poc_type == 0:
            log2_max_poc_lsb = bits.ue() + 4
        elif poc_type == 1:
            bits.u(1)
            bits.se()
            bits.se()
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.u(1)  # gaps_in_frame_num_value_allowed_flag
        bits.ue()  # pic_width_in_mbs_minus1
        bits.ue()  # pic_height_in_map_units_minus1
        frame_mbs_only = bool(bits.u(1))
        self._sps[sps_id] = _H264Sps(
            log2_max_frame_num, poc_type, log2_max_poc_lsb, frame_mbs_only, separate
        )

    def _read_pps(self, bits: _Bits) -> None:
        pps_id = bits.ue()
        sps_id = bits.ue()
        bits.u(1)  # entropy_coding_mode_flag
        self._pps[pps_id] = (sps_id, bool(bits.u(1)))

    def _slice(self, unit: bytes, idr: bool) -> AccessUnit:
        if idr:
            self._run += 1
            self._count = 0
            self._prev_msb = self._prev_lsb = 0
        run = max(self._run, 0)
        bits = _Bits(_rbsp(unit, 1, 64))
        try:
            bits.ue()  # first_mb_in_slice
            bits.ue()  # slice_type
            sps_id, _ = self._pps[bits.ue()]
            sps = self._sps[sps_id]
        except (KeyError, ValueError):
            return AccessUnit(run, self._next_count(), idr)
        if sps.poc_type != 0:  # type 2: output order is decode order; type 1: not handled
            return AccessUnit(run, self._next_count(), idr)
        if sps.separate_colour_plane:
            bits.u(2)
        bits.u(sps.log2_max_frame_num)
        if not sps.frame_mbs_only and bits.u(1):  # field_pic_flag
            bits.u(1)  # bottom_field_flag
        if idr:
            bits.ue()  # idr_pic_id
        lsb = bits.u(sps.log2_max_poc_lsb)
        msb = _poc_msb(lsb, self._prev_lsb, self._prev_msb, 1 << sps.log2_max_poc_lsb)
        if unit[0] & 0x60:  # nal_ref_idc: a reference picture carries the POC state on
            self._prev_msb, self._prev_lsb = msb, lsb
        return AccessUnit(run, msb + lsb, idr)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + bits.se() + 256) % 256
        last = following or last


def _poc_msb(lsb: int, prev_lsb: int, prev_msb: int, max_lsb: int) -> int:
    """PicOrderCntMsb from the previous reference picture's (H.264 8-3, H.265 8-1)."""
    if lsb < prev_lsb and prev_lsb - lsb >= max_lsb // 2:
        return prev_msb + max_lsb
    if lsb > prev_lsb and lsb - prev_lsb > max_lsb // 2:
        return prev_msb - max_lsb
    return prev_msb


@dataclass(slots=True)
class HevcOrder:
    """Feeds HEVC access units in decode order; `units` gets one `AccessUnit` per call."""

    units: list[AccessUnit] = field(default_factory=list)
    _sps: dict[int, tuple[int, bool]] = field(default_factory=dict)  # id → (log2 lsb, sep)
    _pps: dict[int, tuple[int, bool, bool, int]] = field(default_factory=dict)
    _run: int = -1
    _count: int = 0
    _prev_msb: int = 0
    _prev_lsb: int = 0

    def feed(self, access_unit: bytes) -> None:
        """Parameter sets update the tables; the first slice segment gives the unit's POC."""
        for unit in iter_nal_units(access_unit):
            if len(unit) < 3:
                continue
            kind = (unit[0] >> 1) & 0x3F
            if kind == 33:
                self._read_sps(_Bits(_rbsp(unit, 2)))
            elif kind == 34:
                self._read_pps(_Bits(_rbsp(unit, 2)))
            elif kind < 32 and unit[2] & 0x80:  # first_slice_segment_in_pic_flag
                self.units.append(self._slice(unit, kind, (unit[1] & 0x07) - 1))
                return
        self.units.append(AccessUnit(max(self._run, 0), self._next_count(), False))

    def _next_count(self) -> int:
        self._count += 1
        return self._count

    def _read_sps(self, bits: _Bits) -> None:
        bits.u(4)  # sps_video_parameter_set_id
        sub_layers = bits.u(3)  # sps_max_sub_layers_minus1
        bits.u(1)
        bits.u(32)  # general profile space, tier, idc, compatibility flags ...
        bits.u(32)
        bits.u(32)  # ... constraint flags and general_level_idc (96 bits in all)
        present = [(bits.u(1), bits.u(1)) for _ in range(sub_layers)]
        if sub_layers:
            bits.u(2 * (8 - sub_layers))
        for profile, level in present:
            if profile:
                bits.u(32)
                bits.u(32)
                bits.u(24)
            if level:
                bits.u(8)
        sps_id = bits.ue()
        separate = False
        if bits.ue() == 3:  # chroma_format_idc
            separate = bool(bits.u(1))
        bits.ue()  # pic_width_in_luma_samples
        bits.ue()  # pic_height_in_luma_samples
        if bits.u(1):  # conformance_window_flag
            for _ in range(4):
                bits.ue()
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        self._sps[sps_id] = (bits.ue() + 4, separate)

    def _read_pps(self, bits: _Bits) -> None:
        pps_id = bits.ue()
        sps_id = bits.ue()
        dependent = bool(bits.u(1))
        output_flag = bool(bits.u(1))
        self._pps[pps_id] = (sps_id, dependent, output_flag, bits.u(3))

    def _slice(self, unit: bytes, kind: int, temporal_id: int) -> AccessUnit:
        irap = 16 <= kind <= 23
        idr = kind in (19, 20)
        # An IDR or BLA resets the count; so does a CRA that starts the stream.
        if idr or 16 <= kind <= 18 or (kind == 21 and self._run < 0):
            self._run += 1
            self._count = 0
            self._prev_msb = self._prev_lsb = 0
            reset = True
        else:
            reset = False
        run = max(self._run, 0)
        if idr:
            return AccessUnit(run, 0, True)
        bits = _Bits(_rbsp(unit, 2, 64))
        try:
            bits.u(1)  # first_slice_segment_in_pic_flag
            if irap:
                bits.u(1)  # no_output_of_prior_pics_flag
            sps_id, _, output_flag, extra_bits = self._pps[bits.ue()]
            log2_max_lsb, separate = self._sps[sps_id]
            bits.u(extra_bits)
            bits.ue()  # slice_type
            if output_flag:
                bits.u(1)
            if separate:
                bits.u(2)
            lsb = bits.u(log2_max_lsb)
        except (KeyError, ValueError):
            return AccessUnit(run, self._next_count(), irap)
        msb = 0 if reset else _poc_msb(lsb, self._prev_lsb, self._prev_msb, 1 << log2_max_lsb)
        # prevTid0Pic: TemporalId 0 and not RADL, RASL or a sub-layer non-reference picture.
        if temporal_id == 0 and not (6 <= kind <= 9) and not (kind < 16 and kind % 2 == 0):
            self._prev_msb, self._prev_lsb = msb, lsb
        return AccessUnit(run, msb + lsb, irap)
