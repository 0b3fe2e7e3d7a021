//! NF4 with double quantization against bitsandbytes 0.50 on CPU (tests/fixtures/nf4, made by
//! scripts/make_nf4_fixture.py): the packed 4-bit codes, the 8-bit absmax codes, the second-level
//! scales and the offset (torch's float32 mean, summed in torch's order) equal its
//! `quantize_4bit(nf4, compress_statistics=True)` byte for byte on these tensors, and the dequantized
//! weights equal `dequantize_4bit` bit for bit (measured 0 ulp; the check allows 4, for a torch whose
//! reduction order differs); about 4.13 bits a weight. The 8-bit quantizer of the block scales
//! gives bitsandbytes' codes on values next to every midpoint of its dynamic map, where its lookup
//! table and the nearest code disagree (1,204 of the fixture's 4,352 values).

use ptl::model::nf4::{quantize_dynamic, Nf4};
use serde_json::Value;
use std::path::Path;

/// How far the f32 scales and weights may be from bitsandbytes', in units in the last place.
const ULPS: f32 = 4.0;

fn f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn ints(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn nf4_codes_equal_bitsandbytes_byte_for_byte_and_scales_within_ulps() {
    let dir = Path::new("tests/fixtures/nf4");
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    for case in want["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let shape = ints(&case["shape"]);
        let values = f32s(&dir.join(format!("{name}.values.f32")));
        let q = Nf4::quantize(&values, (shape[0] as usize, shape[1] as usize));
        let packed: Vec<u64> = q.packed.iter().map(|b| *b as u64).collect();
        assert_eq!(packed, ints(&case["packed"]), "{name}: packed codes");
        let codes: Vec<u64> = q.absmax_codes.iter().map(|b| *b as u64).collect();
        assert_eq!(codes, ints(&case["absmax_codes"]), "{name}: absmax codes");
        let absmax2: Vec<f32> = case["absmax2"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len());
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / (f32::EPSILON * y.abs().max(f32::MIN_POSITIVE)))
                .fold(0f32, f32::max);
            eprintln!("{name}: {what}: within {worst:.2} ulp");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= ULPS * f32::EPSILON * y.abs().max(f32::MIN_POSITIVE),
                    "{name}: {what}: {x} vs bitsandbytes {y}"
                );
            }
        };
        close(&q.absmax2, &absmax2, "second-level absmax");
        close(
            &[q.offset],
            &[case["offset"].as_f64().unwrap() as f32],
            "offset",
        );
        let bnb = f32s(&dir.join(format!("{name}.dequantized.f32")));
        close(&q.dequantize(), &bnb, "dequantized weights");
        if values.len() >= 4096 {
            let bits = 8.0 * q.bytes() as f64 / values.len() as f64;
            assert!(bits < 4.2, "{name}: {bits} bits a weight");
        }
    }
}

#[test]
fn block_scale_codes_equal_bitsandbytes_next_to_every_midpoint() {
    let dir = Path::new("tests/fixtures/nf4");
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let values = f32s(&dir.join("dynamic.values.f32"));
    let codes = std::fs::read(dir.join("dynamic.codes.u8")).unwrap();
    assert_eq!(
        values.len() as u64,
        want["dynamic"]["values"].as_u64().unwrap()
    );
    let (got, absmax) = quantize_dynamic(&values, 256);
    let wrong = got.iter().zip(&codes).filter(|(a, b)| a != b).count();
    assert_eq!(wrong, 0, "{wrong} of {} codes differ", codes.len());
    let want_absmax: Vec<f32> = want["dynamic"]["absmax"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(absmax, want_absmax);
}
