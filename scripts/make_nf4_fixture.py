#!/usr/bin/env python3
"""Generate the NF4 fixture: ptl's QLoRA quantization must equal bitsandbytes' byte for byte.

Writes, under tests/fixtures/nf4/, for a few tensors (seeded normal values; one whose size is not a
multiple of 64, one with an all-zero block, one with more than 256 blocks): `<name>.values.f32` (the
input, little-endian f32), `<name>.dequantized.f32` (bitsandbytes' `dequantize_4bit`), and in
expected.json bitsandbytes 0.50's `quantize_4bit(..., quant_type="nf4", compress_statistics=True,
blocksize=64)` on CPU: the packed codes, the 8-bit double-quantized absmax codes, their fp32
second-level absmax and the offset. `dynamic.values.f32` and `dynamic.codes.u8`: values near every
midpoint of the signed dynamic 8-bit map (where bitsandbytes' CPU lookup table and the nearest code
can differ) and seeded normal values, in blocks of 256, with the codes of bitsandbytes'
`quantize_blockwise` (the quantizer of the double-quantized block scales).

Re-run:  python3 scripts/make_nf4_fixture.py   (needs torch and bitsandbytes 0.50)
"""

import json
from pathlib import Path

import bitsandbytes
import bitsandbytes.functional as F
import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests/fixtures/nf4"


def case(name, values):
    q, s = F.quantize_4bit(values, quant_type="nf4", compress_statistics=True, blocksize=64)
    d = F.dequantize_4bit(q, s)
    # The inputs and bitsandbytes' dequantized weights as little-endian f32 (exact, and small).
    (OUT / f"{name}.values.f32").write_bytes(values.flatten().numpy().astype("<f4").tobytes())
    (OUT / f"{name}.dequantized.f32").write_bytes(d.flatten().numpy().astype("<f4").tobytes())
    return {
        "name": name,
        "shape": list(values.shape),
        "packed": q.flatten().tolist(),
        "absmax_codes": s.absmax.flatten().tolist(),
        "absmax2": s.state2.absmax.flatten().tolist(),
        "offset": float(s.offset),
    }


def dynamic_case():
    """Values near the dynamic map's midpoints (a few ulps either side, the last of each block 1.0 so
    that the scale is exact), then seeded normal blocks; bitsandbytes' 8-bit codes for them."""
    code = F.create_dynamic_map(signed=True).float()
    midpoints = ((code[:-1] + code[1:]) * 0.5).numpy()
    near = []
    for m in midpoints:
        v = np.float32(m)
        for _ in range(4):
            v = np.nextafter(v, np.float32(-2))
        for _ in range(9):
            near.append(v)
            v = np.nextafter(v, np.float32(2))
    near = np.array(near, dtype=np.float32)
    blocks = np.pad(near, (0, -len(near) % 255)).reshape(-1, 255)
    blocks = np.concatenate([blocks, np.ones((len(blocks), 1), np.float32)], 1).reshape(-1)
    values = torch.cat([torch.from_numpy(blocks), torch.randn(256 * 8) * torch.rand(256 * 8) ** 2])
    codes, absmax = torch.ops.bitsandbytes.quantize_blockwise(values, code, 256)
    (OUT / "dynamic.values.f32").write_bytes(values.numpy().astype("<f4").tobytes())
    (OUT / "dynamic.codes.u8").write_bytes(codes.numpy().astype("u1").tobytes())
    return {"values": len(values), "absmax": absmax.tolist()}


def main():
    torch.manual_seed(0)
    zeros = torch.randn(4, 64) * 0.02
    zeros[1] = 0.0
    cases = [
        case("normal_64x64", torch.randn(64, 64) * 0.05),
        case("remainder_10x37", torch.randn(10, 37)),
        case("zero_block", zeros),
        case("many_blocks_257x64", torch.randn(257, 64) * 0.1 + 0.01),
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    dynamic = dynamic_case()
    (OUT / "expected.json").write_text(
        json.dumps(
            {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "cases": cases, "dynamic": dynamic}
        )
        + "\n"
    )
    print([c["name"] for c in cases])


if __name__ == "__main__":
    main()
