//! An independent reader of TensorBoard event files: TFRecord framing with CRC-32C checks, and the
//! protobuf `Event` / `Summary` messages decoded by hand (no tensorboard-rs, no protobuf crate).
#![allow(dead_code)]

/// One `Event` record, with the fields the tests look at.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// `(tag, simple_value)` of each `Summary.Value` that has a simple value.
    pub scalars: Vec<(String, f32)>,
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15, add a constant.
pub fn masked_crc(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Splits a TFRecord file into its records: `u64 LE length`, `masked crc of the length`, `data`,
/// `masked crc of the data`; checks both CRCs.
pub fn records(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = out.len();
        let len_bytes = slice(bytes, &mut at, 8).map_err(|e| format!("record {n}: {e}"))?;
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap());
        let len_crc = slice(bytes, &mut at, 4).map_err(|e| format!("record {n}: {e}"))?;
        if u32::from_le_bytes(len_crc.try_into().unwrap()) != masked_crc(len_bytes) {
            return Err(format!("record {n}: bad length CRC"));
        }
        let len = usize::try_from(len).map_err(|e| format!("record {n}: {e}"))?;
        let data = slice(bytes, &mut at, len).map_err(|e| format!("record {n}: {e}"))?;
        let data_crc = slice(bytes, &mut at, 4).map_err(|e| format!("record {n}: {e}"))?;
        if u32::from_le_bytes(data_crc.try_into().unwrap()) != masked_crc(data) {
            return Err(format!("record {n}: bad data CRC"));
        }
        out.push(data.to_vec());
    }
    Ok(out)
}

/// A protobuf field's value by wire type.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or("varint runs past the end")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn slice<'a>(buf: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let end = at.checked_add(n).ok_or("length overflows")?;
    let s = buf.get(*at..end).ok_or("runs past the end")?;
    *at = end;
    Ok(s)
}

/// The `(field number, value)` pairs of one message.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let (number, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Field::Varint(varint(buf, &mut at)?),
            1 => Field::Fixed64(slice(buf, &mut at, 8)?.try_into().unwrap()),
            2 => {
                let n = varint(buf, &mut at)? as usize;
                Field::Bytes(slice(buf, &mut at, n)?)
            }
            5 => Field::Fixed32(slice(buf, &mut at, 4)?.try_into().unwrap()),
            w => return Err(format!("field {number}: unsupported wire type {w}")),
        };
        out.push((number, value));
    }
    Ok(out)
}

/// Decodes `tensorflow.Event`: wall_time (1, double), step (2, int64), file_version (3, string),
/// summary (5, Summary); Summary.value (1, repeated Value); Value.tag (1, string),
/// Value.simple_value (2, float).
pub fn event(data: &[u8]) -> Result<Event, String> {
    let mut e = Event::default();
    for (number, f) in fields(data)? {
        match (number, f) {
            (1, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => e.step = v as i64,
            (3, Field::Bytes(b)) => {
                e.file_version = Some(String::from_utf8(b.to_vec()).map_err(|x| x.to_string())?)
            }
            (5, Field::Bytes(summary)) => {
                for (n, v) in fields(summary)? {
                    if let (1, Field::Bytes(value)) = (n, v) {
                        let (mut tag, mut simple) = (None, None);
                        for (n, f) in fields(value)? {
                            match (n, f) {
                                (1, Field::Bytes(b)) => {
                                    tag = Some(
                                        String::from_utf8(b.to_vec()).map_err(|x| x.to_string())?,
                                    )
                                }
                                (2, Field::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
                                _ => {}
                            }
                        }
                        if let (Some(t), Some(v)) = (tag, simple) {
                            e.scalars.push((t, v));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

/// Reads every event of an event file.
pub fn read(path: &std::path::Path) -> Result<Vec<Event>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    records(&bytes)?.iter().map(|r| event(r)).collect()
}
