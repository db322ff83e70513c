//! The papers' recipes (`configs/<dataset>/<recipe>.toml`) before anything is downloaded: `pipeline
//! --dry-run` lists every missing input — dataset, teacher, LPIPS and Inception weights, FID
//! statistics — each with the command that provides it, and exits 2.

mod common;

use std::path::Path;

use common::*;

/// The recipes of the README's reproduction section.
const RECIPES: [&str; 7] = [
    "cifar10/slimflow",
    "cifar10/rfpp",
    "imagenet64/rfpp",
    "imagenet64/slimflow",
    "ffhq64/rfpp",
    "ffhq64/slimflow",
    "afhq64/rfpp",
];

/// The `# problem:` lines of a dry run (exit 2 asserted).
fn problems(config: &Path, dir: &Path, sets: &[&str]) -> Vec<String> {
    let mut c = stage_cmd("pipeline", config, &dir.join("run"), sets);
    c.arg("--dry-run")
        .env("SLIMFLOW_WEIGHTS_DIR", dir.join("no-weights"));
    let out = output(c);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}:\nstdout: {stdout}\nstderr: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("# problem: "))
        .map(String::from)
        .collect()
}

fn one<'a>(problems: &'a [String], key: &str) -> &'a str {
    let found: Vec<&String> = problems.iter().filter(|p| p.starts_with(key)).collect();
    assert_eq!(found.len(), 1, "one `{key}` problem in {problems:#?}");
    found[0]
}

#[test]
fn every_recipe_dry_run_names_the_fix_for_each_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    for id in RECIPES {
        let config = root().join(format!("configs/{id}.toml"));
        let text = std::fs::read_to_string(&config).unwrap();
        let (dataset, _) = id.split_once('/').unwrap();
        // the dataset, teacher and statistics where nothing is: same file names, missing folder
        let missing = dir.path().join("missing");
        let spec = if dataset == "cifar10" {
            format!(
                "cifar10:{}",
                missing.join("cifar-10-binary.tar.gz").display()
            )
        } else {
            let zip = text
                .lines()
                .find_map(|l| l.strip_prefix("dataset = \"edm:"))
                .and_then(|l| l.split('"').next())
                .and_then(|p| Path::new(p).file_name().map(|n| n.to_owned()))
                .unwrap_or_else(|| panic!("{id}: an edm: dataset"));
            format!("edm:{}", missing.join(zip).display())
        };
        let mut sets = vec![format!("data.dataset=\"{spec}\"")];
        let teacher = text
            .lines()
            .find_map(|l| l.strip_prefix("file = \""))
            .and_then(|l| l.split('"').next())
            .map(|f| missing.join(f));
        if let Some(t) = &teacher {
            sets.push(format!("teacher.file=\"{}\"", t.display()));
        }
        // the 64×64 recipes name EDM's statistics from the registry (not in the empty weights
        // folder); CIFAR-10's compute theirs unless given a file, here one that is missing
        let registry = text
            .lines()
            .find_map(|l| l.strip_prefix("reference = \""))
            .and_then(|l| l.split('"').next())
            .map(String::from);
        if registry.is_none() {
            let file = missing.join("cifar10-32x32.npz");
            sets.push(format!("eval.reference=\"{}\"", file.display()));
        }
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let found = problems(&config, dir.path(), &sets);

        let data = one(&found, "data.dataset");
        if dataset == "cifar10" {
            assert!(data.contains("slimflow data fetch cifar10"), "{id}: {data}");
        } else {
            // EDM's dataset tool makes the zips; `slimflow data fetch` prints the steps
            assert!(
                data.contains("dataset_tool.py") && data.contains("slimflow data fetch"),
                "{id}: {data}"
            );
        }
        if let Some(t) = &teacher {
            let p = one(&found, "teacher.file");
            let name = t.file_name().unwrap().to_string_lossy();
            assert!(
                p.contains(&format!(
                    "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/{name}"
                )) && p.contains("--teacher"),
                "{id}: {p}"
            );
        }
        let lpips = one(&found, "LPIPS loss");
        assert!(
            lpips.contains("slimflow weights fetch lpips-vgg"),
            "{id}: {lpips}"
        );
        let inception = one(&found, "eval.features = inception");
        assert!(
            inception.contains("slimflow weights fetch inception"),
            "{id}: {inception}"
        );
        let r = one(&found, "eval.reference");
        let name = registry.as_deref().unwrap_or("fid-ref-cifar10-32x32");
        assert!(
            r.contains(&format!("slimflow weights fetch {name}")),
            "{id}: {r}"
        );
        if dataset != "cifar10" {
            assert!(
                name.starts_with("fid-ref-"),
                "{id}: EDM's statistics, {name}"
            );
        } else {
            assert!(r.contains("slimflow fid-ref --dataset"), "{id}: {r}");
        }
        // data, LPIPS, Inception, statistics [, teacher]: nothing else
        assert_eq!(
            found.len(),
            4 + usize::from(teacher.is_some()),
            "{id}: {found:#?}"
        );
    }
}
