//! GGUF files for llama.cpp: a model's weights under llama.cpp's tensor names, its hyper-parameters
//! and its tokenizer (vocabulary, merges or scores, token types, special ids, chat template) as
//! metadata, in f32, f16 or q8_0, for Llama, Mistral (without a sliding window), Qwen2, Qwen3, Gemma 2
//! and Gemma 3 (text). Layout (GGUF v3): header, key/values, tensor infos, then the data, every
//! tensor aligned to 32 bytes; dims are written fastest-first (ggml's order), so a [out, in] weight
//! is [in, out].

mod arch;
mod vocab;

use super::decoder::Decoder;
use candle_core::{DType, Tensor};
use std::io::Write;
use std::path::Path;

type Result<T> = crate::error::Result<T>;

const ALIGNMENT: usize = 32;

/// How 2-D weights are stored (norms and other 1-D tensors stay f32, as llama.cpp's converter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    F32,
    F16,
    Q8_0,
}

impl Quant {
    /// `general.file_type`: all f32, mostly f16, mostly q8_0.
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q8_0 => 7,
        }
    }
}

/// ggml tensor types.
#[derive(Clone, Copy)]
enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q8_0 = 8,
}

enum Kv {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

struct TensorOut {
    name: String,
    /// ggml order: fastest-varying first.
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// q8_0: blocks of 32 values, each an f16 scale d = max|x| / 127 and 32 int8s round(x / d) (half away
/// from zero), as ggml quantizes.
fn q8_0_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

fn tensor(name: String, t: &Tensor, quant: Quant) -> Result<TensorOut> {
    let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut dims: Vec<u64> = t.dims().iter().map(|d| *d as u64).collect();
    dims.reverse();
    Ok(from_values(name, dims, &values, quant))
}

fn from_values(name: String, dims: Vec<u64>, values: &[f32], quant: Quant) -> TensorOut {
    let matrix = dims.len() == 2;
    let (ty, data) = match quant {
        Quant::Q8_0 if matrix && dims[0].is_multiple_of(32) => (GgmlType::Q8_0, q8_0_bytes(values)),
        Quant::F16 | Quant::Q8_0 if matrix => (GgmlType::F16, f16_bytes(values)),
        _ => (
            GgmlType::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    };
    TensorOut {
        name,
        dims,
        ty,
        data,
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn kv(out: &mut Vec<u8>, key: &str, value: &Kv) {
    string(out, key);
    match value {
        Kv::U32(v) => {
            out.extend(4u32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Kv::F32(v) => {
            out.extend(6u32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Kv::Bool(v) => {
            out.extend(7u32.to_le_bytes());
            out.push(u8::from(*v));
        }
        Kv::Str(s) => {
            out.extend(8u32.to_le_bytes());
            string(out, s);
        }
        Kv::Strs(items) => {
            array_header(out, 8, items.len());
            for s in items {
                string(out, s);
            }
        }
        Kv::I32s(items) => {
            array_header(out, 5, items.len());
            out.extend(items.iter().flat_map(|v| v.to_le_bytes()));
        }
        Kv::F32s(items) => {
            array_header(out, 6, items.len());
            out.extend(items.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
}

/// An array value's type (9), its elements' type and its length; the elements follow.
fn array_header(out: &mut Vec<u8>, element_type: u32, len: usize) {
    out.extend(9u32.to_le_bytes());
    out.extend(element_type.to_le_bytes());
    out.extend((len as u64).to_le_bytes());
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(ALIGNMENT) {
        out.push(0);
    }
}

/// Writes `model` (loaded from `dir`, whose tokenizer files it carries) as one GGUF file at `path`.
pub fn write(model: &mut Decoder, dir: &Path, path: &Path, quant: Quant, name: &str) -> Result<()> {
    model.merge_adapters()?;
    let cfg = model.cfg.clone();
    let target = arch::Target::of(&cfg)?;
    let mut kvs: Vec<(String, Kv)> = vec![
        ("general.architecture".into(), Kv::Str(target.name().into())),
        ("general.name".into(), Kv::Str(name.into())),
        ("general.file_type".into(), Kv::U32(quant.file_type())),
        ("general.quantization_version".into(), Kv::U32(2)),
        ("general.alignment".into(), Kv::U32(ALIGNMENT as u32)),
    ];
    kvs.extend(arch::hyper_parameters(&cfg, target));
    kvs.extend(vocab::tokenizer_kvs(dir, &cfg, target.name())?);
    let tensors = arch::tensors(model, target, quant)?;
    let mut head = Vec::new();
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in &kvs {
        kv(&mut head, k, v);
    }
    let mut offset = 0usize;
    for t in &tensors {
        string(&mut head, &t.name);
        head.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend(d.to_le_bytes());
        }
        head.extend((t.ty as u32).to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset += t.data.len().div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    pad(&mut head);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&head)?;
    for t in &tensors {
        f.write_all(&t.data)?;
        let padding = t.data.len().div_ceil(ALIGNMENT) * ALIGNMENT - t.data.len();
        f.write_all(&vec![0u8; padding])?;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_blocks_are_a_scale_and_32_rounded_bytes() {
        let values: Vec<f32> = (0..32).map(|i| i as f32 - 12.7).collect();
        let bytes = q8_0_bytes(&values);
        assert_eq!(bytes.len(), 34);
        let d = half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        // max |x| is 31 − 12.7 = 18.3; the scale is stored in f16.
        assert!((d - 18.3 / 127.0).abs() < 1e-4, "{d}");
        assert_eq!(bytes[2 + 31] as i8, 127);
        assert_eq!(bytes[2] as i8, (-12.7f32 / (18.3 / 127.0)).round() as i8);
    }

    #[test]
    fn the_llama_permutation_interleaves_each_heads_halves() {
        // One head of 4 rows: transformers' [r0, r1 | r2, r3] pairs (r0, r2), (r1, r3).
        let w = [0.0f32, 1.0, 2.0, 3.0];
        assert_eq!(arch::permute_rows(&w, 4, 1, 1), [0.0, 2.0, 1.0, 3.0]);
    }
}
