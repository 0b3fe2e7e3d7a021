//! Where stages compute: the device and dtype chosen once per run from the pipeline's `config`
//! (`device`, `dtype`) and what this build and machine have. Stage keys hold what is used (`cpu` or
//! `cuda`, `f32`/`bf16`/`f16`), never the requested string: without a GPU, "auto" and "cpu" are the
//! same key, and a device index (`cuda:1`) does not change what a stage computes.

use crate::lang::pipeline::Pipeline;
use crate::lang::value::Value;
use candle_core::{DType, Device};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Compute {
    pub device: Device,
    /// The dtype of forward and backward (weights and optimizer state stay f32).
    pub dtype: DType,
    /// bf16 was asked for on a CPU without bf16 instructions, and `dtype` is f32 instead.
    pub bf16_fallback: bool,
}

/// What goes on a model folder loaded for inference.
#[derive(Clone, Debug, Default)]
pub struct Loading {
    /// A PEFT LoRA adapter, applied on top.
    pub adapter: Option<std::path::PathBuf>,
    /// Every projection held in NF4 with double quantization, as a QLoRA stage trained against
    /// (bitsandbytes' `load_in_4bit` with nf4 and double quantization).
    pub nf4: bool,
}

impl Compute {
    /// The CPU in f32: what commands without a `--device` use.
    pub fn cpu() -> Compute {
        Compute {
            device: Device::Cpu,
            dtype: DType::F32,
            bf16_fallback: false,
        }
    }

    /// From the `config` block (the checker filled in the defaults), or from a stage's own
    /// `device` and `dtype` (the checker filled in the config's where the stage sets none).
    pub fn from_config(config: &BTreeMap<String, Value>) -> Result<Compute, String> {
        let get = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or("auto");
        Compute::resolve(get("device"), get("dtype"))
    }

    /// Each stage's compute: its own `device` and `dtype` for kinds that take them
    /// ([`takes_compute`]), where they differ from the config's; the config's otherwise.
    pub fn per_stage(&self, p: &Pipeline) -> Result<Vec<Compute>, String> {
        let asked = |m: &BTreeMap<String, Value>, k: &str| {
            m.get(k).and_then(Value::as_str).map(str::to_string)
        };
        p.stages
            .iter()
            .map(|s| {
                let same = ["device", "dtype"]
                    .iter()
                    .all(|k| asked(&s.params, k) == asked(&p.config, k));
                if !takes_compute(s.kind) || same {
                    return Ok(self.clone());
                }
                Compute::from_config(&s.params).map_err(|e| format!("stage `{}`: {e}", s.name))
            })
            .collect()
    }

    /// `device`: "auto" (CUDA when this build has it and a GPU is present, else the CPU), "cpu",
    /// "cuda" or "cuda:N"; `dtype`: "auto" (f32 on the CPU, bf16 on CUDA), "f32", "bf16", "f16".
    /// bf16 on a CPU without AVX512-BF16 is f32 (see [`cpu_computes_bf16`]).
    pub fn resolve(device: &str, dtype: &str) -> Result<Compute, String> {
        let device = match device {
            "cpu" => Device::Cpu,
            "auto" => cuda(0).unwrap_or(Device::Cpu),
            d => {
                let index = crate::lang::settings::cuda_index(d)
                    .ok_or_else(|| format!("unknown device \"{d}\""))?;
                cuda(index).ok_or_else(|| no_cuda(d))?
            }
        };
        let bf16_fallback = dtype == "bf16" && device.is_cpu() && !cpu_computes_bf16();
        let dtype = match dtype {
            "auto" if device.is_cpu() => DType::F32,
            "bf16" if bf16_fallback => DType::F32,
            "auto" => DType::BF16,
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            other => return Err(format!("unknown dtype \"{other}\"")),
        };
        Ok(Compute {
            device,
            dtype,
            bf16_fallback,
        })
    }

    /// A model folder loaded for inference: on the device, its weights in the compute dtype.
    pub fn load(
        &self,
        dir: &std::path::Path,
    ) -> crate::error::Result<crate::model::decoder::Decoder> {
        self.load_with(dir, &Loading::default())
    }

    /// As [`Compute::load`], with a PEFT adapter applied first and the base quantized as asked.
    pub fn load_with(
        &self,
        dir: &std::path::Path,
        with: &Loading,
    ) -> crate::error::Result<crate::model::decoder::Decoder> {
        let mut model = crate::model::decoder::Decoder::load(dir, &self.device)?;
        if let Some(a) = &with.adapter {
            model.load_adapter(a)?;
        }
        if with.nf4 {
            model.quantize_base(true)?;
        }
        if self.dtype != DType::F32 {
            model.to_dtype(self.dtype)?;
        }
        Ok(model)
    }

    /// `cpu` or `cuda`: the device class stage keys hold.
    pub fn device_class(&self) -> &'static str {
        if self.device.is_cpu() {
            "cpu"
        } else {
            "cuda"
        }
    }

    pub fn dtype_name(&self) -> &'static str {
        match self.dtype {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            _ => "f32",
        }
    }

    /// For `ptl plan` and the run's first lines: `cpu, f32`, `cuda:0, bf16`, and why f32 where
    /// bf16 was asked.
    pub fn describe(&self) -> String {
        let device = match self.device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cpu".to_string(),
        };
        let why = if self.bf16_fallback {
            " (bf16 asked: this CPU has no AVX512-BF16, where bf16 would be slower than f32)"
        } else {
            ""
        };
        format!("{device}, {}{why}", self.dtype_name())
    }
}

/// Whether bf16 on the CPU computes in bf16: on CPUs with AVX512-BF16 (whose products then run on
/// `model::gemm_bf16` or candle's widening, whichever is faster there), or anywhere with
/// `PTL_CPU_BF16=emulate` (candle widens each bf16 product to f32 and narrows it back: bf16
/// numerics, slower than f32; for reproducing a bf16 run on an older CPU).
pub fn cpu_computes_bf16() -> bool {
    crate::model::gemm_bf16::available()
        || std::env::var("PTL_CPU_BF16").is_ok_and(|v| v == "emulate")
}

/// Whether a kind's `device` and `dtype` fields choose where it computes (training and evaluation
/// kinds); its key then holds the resolved device class and dtype, not the strings.
pub fn takes_compute(kind: &crate::stages::schema::Kind) -> bool {
    kind.field("device").is_some()
}

/// A stage's own `device` and `dtype` (default: the `config` block's).
pub fn stage_fields() -> [crate::stages::schema::FieldSchema; 2] {
    use crate::lang::types::Type;
    use crate::stages::schema::{field, Default};
    [
        field(
            "device",
            Type::Str,
            Default::Config("device"),
            "where this stage computes (default: config.device)",
        ),
        field(
            "dtype",
            Type::Enum(crate::lang::settings::DTYPES),
            Default::Config("dtype"),
            "this stage's compute dtype (default: config.dtype)",
        ),
    ]
}

/// GPU `index` when this build has CUDA and the machine has that GPU.
fn cuda(index: usize) -> Option<Device> {
    if !cfg!(feature = "cuda") || !candle_core::utils::cuda_is_available() {
        return None;
    }
    Device::new_cuda(index).ok()
}

fn no_cuda(requested: &str) -> String {
    if cfg!(feature = "cuda") {
        format!(
            "device \"{requested}\": no such CUDA GPU on this machine (use \"auto\" or \"cpu\")"
        )
    } else {
        format!("device \"{requested}\": this ptl was built without CUDA (rebuild with `cargo build --release --features cuda`, or use \"auto\" or \"cpu\")")
    }
}

/// Pins the process's thread count where nothing chose it, before any thread exists (the first
/// thing `main` does): candle reads `RAYON_NUM_THREADS` on every matmul and, when it is unset,
/// counts the physical cores again by parsing /proc/cpuinfo, a read per matmul (the quickstart's
/// SFT: 4% of its wall time, two thirds of its kernel time). The count is candle's own default; a
/// pipeline's `threads` still decides ([`set_threads`] overwrites it), and a `RAYON_NUM_THREADS`
/// the user set is kept.
pub fn pin_default_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Runs `f` on a thread of a pool of its own, as many threads as rayon's global pool, the caller
/// waiting: a stage's work (matmuls, fused ops, candle's element-wise ops, all split across the pool
/// of the thread that starts them) then starts its parallel parts from a thread of that pool, which
/// takes a share of them, instead of handing every op to the pool and sleeping until it is done.
/// With as many threads as cores, the calling thread was one more than there are cores: every op
/// cost a wake-up and a sleep, and the spinning threads took turns on the cores (the quickstart's
/// model trained 1.3–1.5× slower). A pool per call rather than the global one: a thread of a shared
/// pool that waits for its share can pick up another stage's whole run from the pool's queue (with
/// `-j` above 1), which would hold this stage until that one ended.
///
/// `f` must not wait for another thread that itself starts parallel work on the global pool while
/// that pool is busy; nothing in ptl does.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .build()
    {
        Ok(pool) => pool.install(f),
        // No threads to be had: run here, as before.
        Err(_) => f(),
    }
}

/// [`set_threads`] from the `config` block's `threads`.
pub fn set_threads_from(config: &BTreeMap<String, Value>) {
    if let Some(Value::Int(n)) = config.get("threads") {
        set_threads((*n).max(0) as usize);
    }
}

/// Sizes the CPU thread pools (rayon's, which candle's matmuls run on, and candle's own count) for
/// the run: `threads` 0 means every core. Only the first call in a process takes effect (a watch
/// session keeps the pool of its first check).
pub fn set_threads(threads: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if threads == 0 || ONCE.is_completed() {
        return;
    }
    ONCE.call_once(|| ());
    // candle reads RAYON_NUM_THREADS for how many tasks a matmul is split into; set before any pool
    // or worker thread exists (the command calls this right after checking the pipeline).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_pool_runs_on_a_thread_of_a_pool_as_large_as_the_global_one() {
        let caller = std::thread::current().id();
        assert_eq!(rayon::current_thread_index(), None);
        let global = rayon::current_num_threads();
        let (index, threads, thread) = on_pool(|| {
            (
                rayon::current_thread_index(),
                rayon::current_num_threads(),
                std::thread::current().id(),
            )
        });
        assert!(index.is_some(), "f ran outside any pool");
        assert_eq!(threads, global);
        assert_ne!(thread, caller);
        // Work split inside runs on that pool, and f's result comes back.
        let sum: u64 = on_pool(|| {
            use rayon::prelude::*;
            (1..=1000u64).into_par_iter().sum()
        });
        assert_eq!(sum, 500_500);
    }

    #[test]
    fn auto_is_cuda_in_bf16_with_a_gpu_else_the_same_as_cpu() {
        let a = Compute::resolve("auto", "auto").unwrap();
        if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
            assert_eq!((a.device_class(), a.dtype_name()), ("cuda", "bf16"));
            return;
        }
        let c = Compute::resolve("cpu", "f32").unwrap();
        assert_eq!(
            (a.device_class(), a.dtype_name()),
            (c.device_class(), c.dtype_name())
        );
        assert_eq!(a.describe(), "cpu, f32");
        let bf16 = Compute::resolve("cpu", "bf16").unwrap();
        if cpu_computes_bf16() {
            assert_eq!(bf16.describe(), "cpu, bf16");
        } else {
            assert_eq!(bf16.dtype_name(), "f32");
            assert!(
                bf16.describe().contains("no AVX512-BF16"),
                "{}",
                bf16.describe()
            );
        }
        let e = Compute::resolve("cuda:1", "auto").unwrap_err();
        assert!(e.contains("cuda:1"), "{e}");
    }
}
