//! NF4 with double quantization, as bitsandbytes stores QLoRA's frozen weights: blocks of 64 values
//! scaled by their absmax and mapped to the nearest of 16 normal-float codes (ties to the lower),
//! two codes per byte (the first in the high nibble); the blocks' absmax values, less their mean, are
//! themselves quantized to 8 bits in blocks of 256 with bitsandbytes' signed dynamic map (through its
//! CPU quantizer's lookup table), keeping one f32 scale per 256 blocks
//! (../shared/reference/losses-and-formats.md §8). About 4.13 bits a weight.

/// The 16 NF4 values (bitsandbytes' table, as f32 bits).
const NF4_BITS: [u32; 16] = [
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
];

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), sorted, as f32 bits.
const DYNAMIC_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

pub const BLOCK: usize = 64;
pub const ABSMAX_BLOCK: usize = 256;

fn table<const N: usize>(bits: &[u32; N]) -> [f32; N] {
    bits.map(f32::from_bits)
}

/// A weight matrix in NF4 with double-quantized scales.
#[derive(Clone, Debug)]
pub struct Nf4 {
    /// Row-major [rows, cols].
    pub shape: (usize, usize),
    /// Two 4-bit codes per byte, the even element in the high nibble.
    pub packed: Vec<u8>,
    /// Each 64-block's absmax (less `offset`), as an 8-bit dynamic-map code; empty without double
    /// quantization (then `plain_absmax` holds them in f32).
    pub absmax_codes: Vec<u8>,
    /// One f32 scale per 256 absmax codes.
    pub absmax2: Vec<f32>,
    /// The mean of the blocks' absmax values.
    pub offset: f32,
    /// The blocks' absmax values in f32, without double quantization.
    pub plain_absmax: Vec<f32>,
}

/// Each block's absmax, and the values scaled into [-1, 1] (bitsandbytes' default CPU kernel: full
/// blocks multiply by the reciprocal, a shorter last block divides).
fn scale(values: &[f32], block: usize) -> (Vec<f32>, Vec<f32>) {
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block));
    let mut scaled = Vec::with_capacity(values.len());
    for b in values.chunks(block) {
        let am = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        let am = am.max(1e-38);
        if b.len() == block {
            let inv = 1.0 / am;
            scaled.extend(b.iter().map(|v| (v * inv).clamp(-1.0, 1.0)));
        } else {
            scaled.extend(b.iter().map(|v| (v / am).clamp(-1.0, 1.0)));
        }
    }
    (absmax, scaled)
}

/// An f32 sum in the order torch's CPU reduction adds it (bitsandbytes takes the offset as torch's
/// mean, the sum divided by the count); another order changes the offset's last bit and, through
/// it, can move a block's 8-bit scale code. torch (2.x, AVX2 kernels) sums 8 lanes of a vector
/// separately (each lane by [`row_sum`]), adds the leftover elements first and then the lanes in
/// order; fewer than 8 elements go through [`row_sum`] alone. Checked against torch on sizes 1–39 and
/// up to 4096.
fn torch_sum(a: &[f32]) -> f32 {
    const LANES: usize = 8;
    if a.len() < LANES {
        return row_sum(a);
    }
    let vectors = a.len() / LANES;
    let mut total = 0f32;
    for v in &a[vectors * LANES..] {
        total += v;
    }
    for lane in 0..LANES {
        let column: Vec<f32> = (0..vectors).map(|r| a[r * LANES + lane]).collect();
        total += row_sum(&column);
    }
    total
}

/// torch's scalar row sum: four interleaved partial sums, each accumulated in cascade levels of at
/// least 16 terms, the leftover terms added to the first, then the partials in order.
fn row_sum(a: &[f32]) -> f32 {
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let rows = a.len() / ILP;
    let ceil_log2 = if rows <= 1 {
        0
    } else {
        (usize::BITS - (rows - 1).leading_zeros()) as usize
    };
    let power = 4.max(ceil_log2 / LEVELS);
    let step = 1usize << power;
    let mask = step - 1;
    let mut acc = [[0f32; ILP]; LEVELS];
    let mut i = 0;
    while i + step <= rows {
        for _ in 0..step {
            for k in 0..ILP {
                acc[0][k] += a[i * ILP + k];
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let below = std::mem::take(&mut acc[j - 1]);
            for (sum, v) in acc[j].iter_mut().zip(below) {
                *sum += v;
            }
            if i & (mask << (j * power)) != 0 {
                break;
            }
        }
    }
    while i < rows {
        for k in 0..ILP {
            acc[0][k] += a[i * ILP + k];
        }
        i += 1;
    }
    let mut p = acc[0];
    for level in &acc[1..] {
        for (sum, v) in p.iter_mut().zip(level) {
            *sum += v;
        }
    }
    for v in &a[rows * ILP..] {
        p[0] += v;
    }
    p[1..].iter().fold(p[0], |s, v| s + v)
}

/// The index of the code nearest to `v`: how many midpoints between neighbouring codes lie strictly
/// below it (a value on a midpoint takes the lower code); bitsandbytes' rule for the 4-bit codes.
fn nearest(codes: &[f32], v: f32) -> u8 {
    codes.windows(2).filter(|w| (w[0] + w[1]) / 2.0 < v).count() as u8
}

/// Bins of bitsandbytes' 8-bit CPU quantizer: [-1, 1] cut into this many evenly spaced points.
const LUT_SIZE: usize = 65536;

/// bitsandbytes' (0.50) lookup table for the dynamic map: for each of [`LUT_SIZE`] evenly spaced
/// points of [-1, 1], the code nearest to that point. A value takes the entry of the point nearest
/// to it, so near a midpoint between two codes it can get the farther one; matching its bytes means
/// doing the same, in the same f32 arithmetic.
fn dynamic_lut() -> &'static [u8; LUT_SIZE] {
    static LUT: std::sync::OnceLock<Box<[u8; LUT_SIZE]>> = std::sync::OnceLock::new();
    LUT.get_or_init(|| {
        let codes = table(&DYNAMIC_BITS);
        let midpoints: Vec<f32> = codes.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut lut = Box::new([0u8; LUT_SIZE]);
        let mut code = 0;
        for (i, entry) in lut.iter_mut().enumerate() {
            let point = -1.0f32 + (2.0 * i as f32) / (LUT_SIZE - 1) as f32;
            while code < midpoints.len() && midpoints[code] < point {
                code += 1;
            }
            *entry = code as u8;
        }
        lut
    })
}

/// The 8-bit dynamic-map code bitsandbytes' CPU quantizer gives a value already scaled into [-1, 1].
fn dynamic_code(v: f32) -> u8 {
    let point = ((v.clamp(-1.0, 1.0) + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as usize;
    dynamic_lut()[point.min(LUT_SIZE - 1)]
}

/// Values in blocks of `block`, each multiplied by the reciprocal of its absmax and coded in
/// bitsandbytes' signed dynamic 8-bit map, as its `quantize_blockwise` does on CPU (an all-zero
/// block gets code 0): the codes and the blocks' absmax values.
pub fn quantize_dynamic(values: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block));
    for b in values.chunks(block) {
        let am = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        let inv = 1.0 / am;
        codes.extend(
            b.iter()
                .map(|v| if am == 0.0 { 0 } else { dynamic_code(v * inv) }),
        );
    }
    (codes, absmax)
}

impl Nf4 {
    /// Quantizes a row-major [rows, cols] matrix with double quantization (QLoRA's default).
    pub fn quantize(values: &[f32], shape: (usize, usize)) -> Nf4 {
        Nf4::quantize_with(values, shape, true)
    }

    /// Quantizes a row-major [rows, cols] matrix; `double`: the blocks' absmax values in 8 bits too.
    pub fn quantize_with(values: &[f32], shape: (usize, usize), double: bool) -> Nf4 {
        let nf4 = table(&NF4_BITS);
        let (absmax, mut scaled) = scale(values, BLOCK);
        if scaled.len() % 2 == 1 {
            scaled.push(0.0);
        }
        let packed = scaled
            .chunks(2)
            .map(|p| nearest(&nf4, p[0]) << 4 | nearest(&nf4, p[1]))
            .collect();
        if !double {
            return Nf4 {
                shape,
                packed,
                absmax_codes: vec![],
                absmax2: vec![],
                offset: 0.0,
                plain_absmax: absmax,
            };
        }
        // Double quantization: the absmax values less their mean, in 8 bits per 256.
        let offset = torch_sum(&absmax) / absmax.len().max(1) as f32;
        let centered: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        let (absmax_codes, absmax2) = quantize_dynamic(&centered, ABSMAX_BLOCK);
        Nf4 {
            shape,
            packed,
            absmax_codes,
            absmax2,
            offset,
            plain_absmax: vec![],
        }
    }

    /// The blocks' absmax values, recovered from their 8-bit codes.
    pub fn absmax(&self) -> Vec<f32> {
        if self.absmax_codes.is_empty() {
            return self.plain_absmax.clone();
        }
        let dynamic = table(&DYNAMIC_BITS);
        self.absmax_codes
            .iter()
            .enumerate()
            .map(|(i, c)| dynamic[*c as usize] * self.absmax2[i / ABSMAX_BLOCK] + self.offset)
            .collect()
    }

    /// The weights as f32, row-major (what the matmul uses, block by block).
    pub fn dequantize(&self) -> Vec<f32> {
        let nf4 = table(&NF4_BITS);
        let absmax = self.absmax();
        let n = self.shape.0 * self.shape.1;
        let mut out = Vec::with_capacity(n);
        for (i, byte) in self.packed.iter().enumerate() {
            for (k, code) in [byte >> 4, byte & 0xF].into_iter().enumerate() {
                let j = 2 * i + k;
                if j < n {
                    out.push(nf4[code as usize] * absmax[j / BLOCK]);
                }
            }
        }
        out
    }

    /// Bytes held: the codes, the 8-bit scales, the second-level scales and the offset.
    pub fn bytes(&self) -> usize {
        self.packed.len()
            + self.absmax_codes.len()
            + 4 * (self.absmax2.len() + self.plain_absmax.len())
            + 4
    }

    /// The weights as a [rows, cols] tensor in `dtype` on `device`.
    pub fn tensor(
        &self,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_vec(self.dequantize(), self.shape, device)?.to_dtype(dtype)
    }
}
