//! `--mpi`: issue 11's four targets, forkpool's MPI pool against mpi4py's, both under
//! `mpirun -n 3 --oversubscribe`.
//!
//! Builds `examples/mpi_bench` with the `mpi` feature (`cargo build --release --features mpi
//! --example mpi_bench`, a no-op when it is up to date), then runs it and
//! `python3 -m mpi4py.futures benches/mpi4py_pool.py` alternately, `reps` times each (the order
//! alternates between repetitions, so both see the same load), each launch bounded by
//! `timeout`. Both print the same four lines (W1 tasks/s, W3 median µs, W5 speedup, idle % of
//! one CPU); every ratio is computed per repetition and the table shows the median of those
//! ratios, with their range. As root, the variables Open MPI wants are set for the launches.
//! The table is printed and written as markdown to `target/compare-mpi.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{median, num, ratio_cell, target_dir};

/// Seconds one launch may take before `timeout` ends it.
const LIMIT: &str = "300";

/// The four figures one launch prints.
#[derive(Debug, Clone, Copy)]
struct Figures {
    w1: f64,
    w3: f64,
    w5: f64,
    idle: f64,
}

impl Figures {
    /// Parses the output of `mpi_bench` or `mpi4py_pool.py`.
    fn parse(out: &str) -> Result<Figures, String> {
        let field = |prefix: &str| -> Result<f64, String> {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.trim_end_matches(['x', '%']).parse().ok())
                .ok_or_else(|| format!("no {prefix:?} line in:\n{out}"))
        };
        Ok(Figures {
            w1: field("W1 apply_async 20k: ")?,
            w3: field("W3 apply round trip: ")?,
            w5: field("W5 4 CPU-bound tasks: ")?,
            idle: field("idle open pool: ")?,
        })
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `mpi_bench` with the feature; returns its path.
fn build_bench() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--features",
            "mpi",
            "--example",
            "mpi_bench",
        ])
        .current_dir(manifest_dir())
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release --features mpi --example mpi_bench` failed ({status}); \
             the mpi feature needs Open MPI and libclang (see the README)"
        ));
    }
    let exe = target_dir().join("release/examples/mpi_bench");
    if !exe.exists() {
        return Err(format!("{} is missing after the build", exe.display()));
    }
    Ok(exe)
}

/// One bounded `mpirun -n 3 --oversubscribe` of `program`; its figures.
fn launch(program: &[&str]) -> Result<Figures, String> {
    let output = Command::new("timeout")
        .args(["-k", "5", LIMIT, "mpirun", "-n", "3", "--oversubscribe"])
        .args(program)
        .current_dir(manifest_dir())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .map_err(|e| format!("running mpirun (is Open MPI installed?): {e}"))?;
    let out = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{} ended with {}:\n{out}\n{}",
            program.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Figures::parse(&out)
}

/// The 1-minute load average now.
fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn cell(values: &[f64], unit: &str) -> String {
    let (lo, hi) = range(values);
    format!("{}{unit} ({}–{})", num(median(values)), num(lo), num(hi))
}

/// Runs the MPI comparison; exits non-zero if it could not measure.
pub fn run(reps: usize) {
    if let Err(e) = measure(reps) {
        eprintln!("compare --mpi: {e}");
        std::process::exit(1);
    }
}

fn measure(reps: usize) -> Result<(), String> {
    let exe = build_bench()?;
    let exe = exe.to_str().ok_or("a non-UTF-8 target path")?.to_owned();
    let script = Path::new("benches/mpi4py_pool.py");
    let python = [
        "python3",
        "-m",
        "mpi4py.futures",
        script.to_str().expect("ascii"),
    ];
    let has_mpi4py = Command::new("python3")
        .args(["-c", "import mpi4py.util.pool"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_mpi4py {
        return Err("mpi4py is not installed (pip install mpi4py)".into());
    }
    let (mut fp, mut py, mut loads) = (Vec::new(), Vec::new(), vec![load()]);
    for rep in 0..reps {
        let mut both = [None, None];
        let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let figures = if which == 0 {
                launch(&[&exe])?
            } else {
                launch(&python)?
            };
            loads.push(load());
            both[which] = Some(figures);
        }
        let [Some(f), Some(p)] = both else {
            unreachable!("both ran")
        };
        eprintln!(
            "rep {}/{reps}: forkpool W1 {:.0}/s W3 {:.1} µs W5 {:.2}x idle {:.1}%; \
             mpi4py W1 {:.0}/s W3 {:.1} µs W5 {:.2}x idle {:.1}%",
            rep + 1,
            f.w1,
            f.w3,
            f.w5,
            f.idle,
            p.w1,
            p.w3,
            p.w5,
            p.idle
        );
        fp.push(f);
        py.push(p);
    }
    let col = |v: &[Figures], f: fn(&Figures) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let per_rep = |f: fn(&Figures) -> f64| -> Vec<f64> {
        fp.iter().zip(&py).map(|(a, b)| f(a) / f(b)).collect()
    };
    let w1_ratio = per_rep(|f| f.w1);
    let w3_ratio = per_rep(|f| f.w3);
    struct Row {
        name: &'static str,
        fp: String,
        py: String,
        ratio: String,
        target: &'static str,
        pass: bool,
    }
    let rows = [
        Row {
            name: "W1 apply_async of a trivial task, 20k, then get all (tasks/s)",
            fp: cell(&col(&fp, |f| f.w1), ""),
            py: cell(&col(&py, |f| f.w1), ""),
            ratio: ratio_cell(&w1_ratio),
            target: "≥ 20x mpi4py",
            pass: median(&w1_ratio) >= 20.0,
        },
        Row {
            name: "W3 apply round trip, median of 2,000 (µs)",
            fp: cell(&col(&fp, |f| f.w3), ""),
            py: cell(&col(&py, |f| f.w3), ""),
            ratio: format!(
                "1/{} (1/{}–1/{})",
                num(1.0 / median(&w3_ratio)),
                num(1.0 / range(&w3_ratio).1),
                num(1.0 / range(&w3_ratio).0)
            ),
            target: "≤ 1/10 of mpi4py",
            pass: median(&w3_ratio) <= 0.1,
        },
        Row {
            name: "W5 4 CPU-bound tasks of ~0.5 s (x serial)",
            fp: cell(&col(&fp, |f| f.w5), "x"),
            py: cell(&col(&py, |f| f.w5), "x"),
            ratio: "–".into(),
            target: "≥ 1.8x serial",
            pass: median(&col(&fp, |f| f.w5)) >= 1.8,
        },
        Row {
            name: "Idle open pool, CPU of every process over 2 s (% of one CPU)",
            fp: cell(&col(&fp, |f| f.idle), ""),
            py: cell(&col(&py, |f| f.idle), ""),
            ratio: "–".into(),
            target: "< 5%",
            pass: median(&col(&fp, |f| f.idle)) < 5.0,
        },
    ];
    let (lo, hi) = range(&loads);
    let mut md = format!(
        "forkpool over MPI against mpi4py.util.pool, `mpirun -n 3 --oversubscribe`, {reps} \
         repetitions interleaved; medians (ranges); ratios per repetition; load average {lo:.1} \
         to {hi:.1} during the run.\n\n\
         | Workload | forkpool over MPI | mpi4py.util.pool | Ratio | Target | Result |\n\
         |---|---|---|---|---|---|\n"
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.fp,
            r.py,
            r.ratio,
            r.target,
            if r.pass { "PASS" } else { "MISS" }
        ));
    }
    let passed = rows.iter().filter(|r| r.pass).count();
    md.push_str(&format!(
        "\nTargets: {passed} PASS, {} MISS.\n",
        rows.len() - passed
    ));
    println!("{md}");
    let path = target_dir().join("compare-mpi.md");
    std::fs::write(&path, &md).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}
