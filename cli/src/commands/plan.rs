//! `kestrel plan`: the memory a model needs at a context and batch, against what this machine
//! has, from its config or GGUF header alone (the loader checks the same arithmetic).

use std::io::Write;

use anyhow::bail;
use kestrel_engine::plan::bytes;
use kestrel_engine::{Model, parse_device};
use serde_json::json;

use crate::args::PlanArgs;
use crate::hub::{ModelSpec, default_model, resolve_for_plan};
use crate::loading::{context_options, parse_dtype};

/// Exit code when the plan does not fit.
pub const EXIT_DOES_NOT_FIT: u8 = 1;

/// Runs the command; the exit code says whether the plan fits.
pub fn run(args: &PlanArgs) -> anyhow::Result<u8> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let device = parse_device(&args.device)?;
    let spec = match args.model.as_deref() {
        Some(text) => ModelSpec::parse(text)?,
        None => ModelSpec::parse(default_model(!device.is_cpu()).0)?,
    };
    let path = resolve_for_plan(&spec)?;
    let mut options = context_options(&args.context)?;
    options.device = device;
    options.dtype = parse_dtype(args.dtype.as_deref())?;
    options.sequences = args.batch;
    let plan = Model::plan(&path, &options)?;
    let fits = plan.fits();
    let largest = plan.largest_fitting_context();
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = json!({
            "model": path,
            "parameters": plan.parameters,
            "active_parameters": plan.active_parameters,
            "weight_bytes": plan.weight_bytes,
            "kv_type": plan.kv_type.name(),
            "kv_bytes_per_token": plan.kv_bytes_per_token,
            "context": plan.context,
            "batch": plan.batch,
            "kv_bytes": plan.kv_bytes(),
            "scratch_bytes": plan.scratch_bytes,
            "total_bytes": plan.total_bytes(),
            "place": plan.budget.place,
            "available_bytes": plan.budget.available,
            "fits": fits,
            "largest_fitting_context": largest,
        });
        writeln!(out, "{value}")?;
    } else {
        let sequences = if plan.batch == 1 {
            "sequence"
        } else {
            "sequences"
        };
        writeln!(out, "model     {}", path.display())?;
        let billions = |n: u64| format!("{:.2} B", n as f64 / 1e9);
        if plan.active_parameters < plan.parameters {
            writeln!(
                out,
                "params    {} ({} active per token)",
                billions(plan.parameters),
                billions(plan.active_parameters)
            )?;
        } else {
            writeln!(out, "params    {}", billions(plan.parameters))?;
        }
        writeln!(out, "weights   {}", bytes(plan.weight_bytes))?;
        writeln!(
            out,
            "KV cache  {}/token ({}) x {} tokens x {} {sequences} = {}",
            bytes(plan.kv_bytes_per_token),
            plan.kv_type,
            plan.context,
            plan.batch,
            bytes(plan.kv_bytes()),
        )?;
        writeln!(out, "scratch   {}", bytes(plan.scratch_bytes))?;
        writeln!(out, "total     {}", bytes(plan.total_bytes()))?;
        let verdict = match (plan.budget.available, fits) {
            (Some(a), Some(true)) => format!("{} available: {}; fits", plan.budget.place, bytes(a)),
            (Some(a), _) => match largest {
                Some(n) if n > 0 => format!(
                    "{} available: {}; does not fit (at most {n} tokens would)",
                    plan.budget.place,
                    bytes(a)
                ),
                _ => format!(
                    "{} available: {}; does not fit (the weights and scratch alone take {})",
                    plan.budget.place,
                    bytes(a),
                    bytes(plan.weight_bytes + plan.scratch_bytes)
                ),
            },
            (None, _) => format!("{} available: unknown", plan.budget.place),
        };
        writeln!(out, "{verdict}")?;
    }
    Ok(if fits == Some(false) {
        EXIT_DOES_NOT_FIT
    } else {
        0
    })
}
