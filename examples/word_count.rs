//! Map-reduce over the files of a directory: the workers count the words of one file each (the
//! map), the parent adds the counts up (the reduce) and prints the totals and the top 10 words.
//!
//! The parent walks the directory (recursively, with `std::fs`) and sends each file's path to
//! the pool as a `String`. A file that cannot be read (gone, not text, no permission) is an
//! error the task returns as its value, `Err(String)`: the parent reports it and skips the
//! file, and the other files count as usual. A task that panicked or whose worker died would
//! fail the whole `map_chunked`, which the `?` passes on.
//!
//! Run with `cargo run --example word_count [DIRECTORY]`; the default is this repository's
//! `src/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use forkpool::Pool;

/// Runs in a worker: the lowercase words of one file and how often each occurs. A word is a
/// run of letters, digits, underscores and apostrophes that starts with a letter, so `u64` and
/// `don't` are words and `42` is not.
fn count_words(path: String) -> Result<HashMap<String, u64>, String> {
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut counts = HashMap::new();
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '\'')) {
        let word = word.trim_matches('\'');
        if word.starts_with(char::is_alphabetic) {
            *counts.entry(word.to_lowercase()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Every file under `dir`, recursively, in a stable order. Symbolic links are listed as files,
/// not followed as directories, so a link cycle cannot trap the walk. A directory that cannot be
/// listed is reported and skipped.
fn files_under(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("skipped {}: {e}", dir.display());
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(|entry| entry.ok()).collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => files_under(&path, files),
            Ok(_) => files.push(path),
            Err(e) => eprintln!("skipped {}: {e}", path.display()),
        }
    }
}

fn main() -> forkpool::Result<()> {
    // Build the pool first thing in main, before any other thread exists.
    let pool = Pool::builder().build()?;

    let dir = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        PathBuf::from,
    );
    if !dir.is_dir() {
        eprintln!("{} is not a directory", dir.display());
        std::process::exit(2);
    }
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    let mut skipped = 0;
    // Paths go to the workers as Strings; one that is not UTF-8 is skipped here.
    let paths: Vec<String> = files
        .into_iter()
        .filter_map(|path| match path.into_os_string().into_string() {
            Ok(path) => Some(path),
            Err(path) => {
                eprintln!(
                    "skipped {}: the path is not UTF-8",
                    Path::new(&path).display()
                );
                skipped += 1;
                None
            }
        })
        .collect();

    // Map: one file per task (chunks of 1), since files differ widely in size and a chunk of
    // several would leave one worker with the big ones while the others idle.
    let per_file = pool.map_chunked(count_words, paths, 1)?;
    pool.close();
    pool.join()?;

    // Reduce, in the parent.
    let mut totals: HashMap<String, u64> = HashMap::new();
    let mut counted = 0;
    for result in per_file {
        match result {
            Ok(counts) => {
                counted += 1;
                for (word, n) in counts {
                    *totals.entry(word).or_insert(0) += n;
                }
            }
            Err(message) => {
                skipped += 1;
                eprintln!("skipped {message}");
            }
        }
    }
    let mut ranked: Vec<(String, u64)> = totals.into_iter().collect();
    ranked.sort_by(|(a, m), (b, n)| n.cmp(m).then_with(|| a.cmp(b)));

    let words: u64 = ranked.iter().map(|(_, n)| n).sum();
    println!(
        "{}: {words} words ({} distinct) in {counted} files, {skipped} skipped",
        dir.display(),
        ranked.len()
    );
    for (rank, (word, n)) in ranked.iter().take(10).enumerate() {
        println!("{:2}. {word:<12} {n:>7}", rank + 1);
    }
    Ok(())
}
