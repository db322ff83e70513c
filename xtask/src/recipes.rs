//! Training recipes: the pipeline configs `configs/<DATASET>/<RECIPE>.toml`, and what the flags of
//! `cargo xtask train` (`--student`, `--teacher`, `--data`) change in them.
//!
//! The flags become `--set` overrides, so the binary validates them like any other value. Only the
//! few keys the mapping depends on are read here (`model`, `data.dataset`, `teacher.from`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One recipe: `configs/<dataset>/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The dataset folder (`cifar10`, `imagenet64`, …).
    pub dataset: String,
    /// The recipe (`slimflow`, `rfpp`, …).
    pub name: String,
    /// The config file.
    pub path: PathBuf,
}

impl Recipe {
    /// `DATASET/RECIPE`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.dataset, self.name)
    }
}

/// Every `*.toml` one level below `configs`, sorted by id.
pub fn discover(configs: &Path) -> Result<Vec<Recipe>> {
    let mut found = Vec::new();
    let dirs =
        std::fs::read_dir(configs).with_context(|| format!("reading {}", configs.display()))?;
    for dir in dirs {
        let dir = dir.with_context(|| format!("reading {}", configs.display()))?;
        if !dir.path().is_dir() {
            continue;
        }
        let dataset = dir.file_name().to_string_lossy().into_owned();
        let files = std::fs::read_dir(dir.path())
            .with_context(|| format!("reading {}", dir.path().display()))?;
        for file in files {
            let path = file
                .with_context(|| format!("reading {}", dir.path().display()))?
                .path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Some(stem) = path.file_stem() {
                    found.push(Recipe {
                        dataset: dataset.clone(),
                        name: stem.to_string_lossy().into_owned(),
                        path,
                    });
                }
            }
        }
    }
    found.sort_by_key(Recipe::id);
    Ok(found)
}

/// The recipe named `DATASET/RECIPE`; an unknown name lists the available ones.
pub fn find(configs: &Path, id: &str) -> Result<Recipe> {
    let all = discover(configs)?;
    if let Some(r) = all.iter().find(|r| r.id() == id) {
        return Ok(r.clone());
    }
    let names: Vec<String> = all.iter().map(Recipe::id).collect();
    bail!(
        "--recipe {id}: no configs/{id}.toml; available recipes (DATASET/RECIPE): {}",
        names.join(", ")
    )
}

/// SlimFlow's student sizes per dataset (SlimFlow README "Model Configurations") and the prefix of
/// their model presets.
const STUDENTS: &[(&str, &str, &[&str])] = &[
    ("cifar10", "slimflow-", &["27.9M", "15.7M", "7.0M", "3.4M"]),
    ("imagenet64", "slimflow-imagenet64-", &["80.7M", "44.7M"]),
    (
        "ffhq64",
        "slimflow-ffhq64-",
        &["27.9M", "15.7M", "7.0M", "3.4M"],
    ),
];

/// The keys of a config that the flag mapping depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `model` when it is a preset name.
    pub model: Option<String>,
    /// `data.dataset`.
    pub dataset: Option<String>,
    /// `teacher.from`.
    pub teacher_from: Option<String>,
}

impl Facts {
    /// Reads them from the TOML text of a config.
    pub fn parse(text: &str, origin: &Path) -> Result<Facts> {
        let doc: toml::Table =
            toml::from_str(text).with_context(|| format!("parsing {}", origin.display()))?;
        let string = |v: Option<&toml::Value>| v.and_then(|v| v.as_str()).map(String::from);
        let table = |k: &str| doc.get(k).and_then(|v| v.as_table());
        Ok(Facts {
            model: string(doc.get("model")),
            dataset: string(table("data").and_then(|t| t.get("dataset"))),
            teacher_from: string(table("teacher").and_then(|t| t.get("from"))),
        })
    }

    /// Reads them from a config file.
    pub fn read(path: &Path) -> Result<Facts> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Facts::parse(&text, path)
    }
}

/// The recipe flags of `cargo xtask train`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags<'a> {
    /// `--student SIZE`.
    pub student: Option<&'a str>,
    /// `--teacher FILE`.
    pub teacher: Option<&'a Path>,
    /// `--data PATH`.
    pub data: Option<&'a Path>,
}

/// The `--set` overrides that `flags` make to `recipe` (whose relevant keys are `facts`).
pub fn overrides(recipe: &Recipe, facts: &Facts, flags: Flags<'_>) -> Result<Vec<String>> {
    let mut sets = Vec::new();
    if let Some(s) = flags.student {
        sets.push(format!("reflow.model=\"{}\"", student_preset(recipe, s)?));
    }
    if let Some(t) = flags.teacher {
        let from = teacher_source(recipe, facts)?;
        let t = std::path::absolute(t).with_context(|| format!("{}", t.display()))?;
        sets.push(format!("teacher.from=\"{from}\""));
        sets.push(format!(
            "teacher.file={}",
            toml_string(&t.display().to_string())
        ));
    }
    if let Some(d) = flags.data {
        let d = std::path::absolute(d).with_context(|| format!("{}", d.display()))?;
        let spec = dataset_spec(recipe, facts, &d)?;
        sets.push(format!("data.dataset={}", toml_string(&spec)));
    }
    Ok(sets)
}

/// The model preset of SlimFlow student `size` (case-insensitive, e.g. `15.7M`) for the recipe.
fn student_preset(recipe: &Recipe, size: &str) -> Result<String> {
    if recipe.name != "slimflow" {
        bail!(
            "--student picks a SlimFlow student; the {} recipe trains the teacher's architecture",
            recipe.id()
        );
    }
    let Some((_, prefix, sizes)) = STUDENTS.iter().find(|(d, _, _)| *d == recipe.dataset) else {
        let have: Vec<&str> = STUDENTS.iter().map(|(d, _, _)| *d).collect();
        bail!(
            "--student: SlimFlow defines no students for {} (it does for {})",
            recipe.dataset,
            have.join(", ")
        );
    };
    match sizes.iter().find(|s| s.eq_ignore_ascii_case(size)) {
        Some(s) => Ok(format!("{prefix}{}", s.to_lowercase())),
        None => bail!(
            "--student {size}: {} students are {}",
            recipe.dataset,
            sizes.join(", ")
        ),
    }
}

/// The `teacher.from` of a `--teacher` file: the recipe's own `[teacher] from` when it imports one,
/// else the format its teacher architecture comes in (RectifiedFlow's 1-RF NCSN++: score_sde
/// checkpoints; EDM's networks: EDM snapshots).
fn teacher_source(recipe: &Recipe, facts: &Facts) -> Result<String> {
    if let Some(from) = &facts.teacher_from {
        return Ok(from.clone());
    }
    match facts.model.as_deref() {
        Some(m) if m.starts_with("rf-") => Ok("ncsnpp".into()),
        Some(m) if m.starts_with("edm-") => Ok("edm".into()),
        _ => bail!(
            "--teacher: {} names no checkpoint format for its teacher; use --set teacher.from=edm|rfpp|ncsnpp --set teacher.file=FILE",
            recipe.id()
        ),
    }
}

/// The dataset spec of `--data PATH` for the recipe's kind of dataset: CIFAR-10's binary archive or
/// folder; EDM's dataset zips and folders (`edm:`), or for ImageNet a folder of downsampled-ImageNet
/// `.npz` batches (`imagenet64-npz:`).
fn dataset_spec(recipe: &Recipe, facts: &Facts, path: &Path) -> Result<String> {
    let kind = facts
        .dataset
        .as_deref()
        .and_then(|s| s.split(',').next())
        .map(|head| head.split_once(':').map_or(head, |(k, _)| k))
        .unwrap_or_default();
    let p = path.display();
    Ok(match kind {
        "edm" | "imagenet64-npz" if has_npz(path) => format!("imagenet64-npz:{p}"),
        "edm" | "imagenet64-npz" => format!("edm:{p}"),
        "cifar10" | "folder" | "idx" | "mnist" | "fashion-mnist" => format!("{kind}:{p}"),
        "" => bail!("--data: {} trains on no dataset", recipe.id()),
        other => bail!(
            "--data: {} uses the built-in `{other}` dataset, which takes no path",
            recipe.id()
        ),
    })
}

/// Whether `path` is a folder holding `.npz` files (downsampled ImageNet's batches).
fn has_npz(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "npz"))
    })
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> PathBuf {
        crate::root().join("configs")
    }

    fn recipe(id: &str) -> (Recipe, Facts) {
        let r = find(&configs(), id).unwrap();
        let f = Facts::read(&r.path).unwrap();
        (r, f)
    }

    fn sets(id: &str, flags: Flags<'_>) -> Result<Vec<String>> {
        let (r, f) = recipe(id);
        overrides(&r, &f, flags)
    }

    #[test]
    fn recipes_are_the_configs_one_level_down() {
        let ids: Vec<String> = discover(&configs())
            .unwrap()
            .iter()
            .map(Recipe::id)
            .collect();
        for id in [
            "cifar10/slimflow",
            "cifar10/rfpp",
            "imagenet64/slimflow",
            "imagenet64/rfpp",
            "ffhq64/slimflow",
            "ffhq64/rfpp",
            "afhq64/rfpp",
        ] {
            assert!(ids.contains(&id.to_string()), "{id} in {ids:?}");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let (r, _) = recipe("imagenet64/rfpp");
        assert_eq!(r.path, configs().join("imagenet64/rfpp.toml"));
    }

    #[test]
    fn an_unknown_recipe_lists_the_available_ones() {
        for bad in ["imagenet64/edm", "slimflow", "cifar10/"] {
            let e = find(&configs(), bad).unwrap_err().to_string();
            assert!(
                e.contains(bad) && e.contains("cifar10/rfpp") && e.contains("afhq64/rfpp"),
                "{e}"
            );
        }
    }

    #[test]
    fn students_are_the_datasets_slimflow_sizes() {
        let student = |id: &str, s: &'static str| {
            sets(
                id,
                Flags {
                    student: Some(s),
                    ..Flags::default()
                },
            )
        };
        assert_eq!(
            student("cifar10/slimflow", "15.7M").unwrap(),
            vec!["reflow.model=\"slimflow-15.7m\""]
        );
        assert_eq!(
            student("imagenet64/slimflow", "44.7m").unwrap(),
            vec!["reflow.model=\"slimflow-imagenet64-44.7m\""]
        );
        assert_eq!(
            student("ffhq64/slimflow", "3.4M").unwrap(),
            vec!["reflow.model=\"slimflow-ffhq64-3.4m\""]
        );
        let e = student("imagenet64/slimflow", "15.7M")
            .unwrap_err()
            .to_string();
        assert!(e.contains("80.7M, 44.7M"), "{e}");
        let e = student("imagenet64/rfpp", "80.7M").unwrap_err().to_string();
        assert!(e.contains("teacher's architecture"), "{e}");
    }

    #[test]
    fn teacher_files_take_the_recipes_checkpoint_format() {
        let teacher = |id: &str| {
            let s = sets(
                id,
                Flags {
                    teacher: Some(Path::new("/ckpt/teacher.bin")),
                    ..Flags::default()
                },
            )
            .unwrap();
            assert_eq!(s[1], "teacher.file=\"/ckpt/teacher.bin\"", "{s:?}");
            s[0].clone()
        };
        // SlimFlow's CIFAR-10 teacher is RectifiedFlow's 1-RF (score_sde checkpoints); every other
        // recipe imports an EDM snapshot
        assert_eq!(teacher("cifar10/slimflow"), "teacher.from=\"ncsnpp\"");
        for id in [
            "cifar10/rfpp",
            "imagenet64/rfpp",
            "imagenet64/slimflow",
            "ffhq64/slimflow",
            "ffhq64/rfpp",
            "afhq64/rfpp",
        ] {
            assert_eq!(teacher(id), "teacher.from=\"edm\"", "{id}");
        }
        // a relative file becomes absolute (stages may run elsewhere)
        let (r, f) = recipe("ffhq64/rfpp");
        let s = overrides(
            &r,
            &f,
            Flags {
                teacher: Some(Path::new("t.pkl")),
                ..Flags::default()
            },
        )
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            s[1],
            format!("teacher.file=\"{}\"", cwd.join("t.pkl").display())
        );
    }

    #[test]
    fn data_paths_become_the_recipes_dataset_kind() {
        let dir = tempfile::tempdir().unwrap();
        let npz = dir.path().join("npz");
        std::fs::create_dir(&npz).unwrap();
        std::fs::write(npz.join("Imagenet64_train_part1.npz"), b"").unwrap();
        let folder = dir.path().join("images");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("dataset.json"), b"{}").unwrap();
        let zip = dir.path().join("imagenet-64x64.zip");
        let data = |id: &str, p: &Path| {
            sets(
                id,
                Flags {
                    data: Some(p),
                    ..Flags::default()
                },
            )
            .map(|s| s.join(" "))
        };
        let spec = |kind: &str, p: &Path| format!("data.dataset=\"{kind}:{}\"", p.display());
        assert_eq!(
            data("cifar10/rfpp", &folder).unwrap(),
            spec("cifar10", &folder)
        );
        assert_eq!(
            data("imagenet64/rfpp", &npz).unwrap(),
            spec("imagenet64-npz", &npz)
        );
        assert_eq!(
            data("imagenet64/slimflow", &zip).unwrap(),
            spec("edm", &zip)
        );
        assert_eq!(
            data("imagenet64/rfpp", &folder).unwrap(),
            spec("edm", &folder)
        );
        assert_eq!(data("ffhq64/slimflow", &zip).unwrap(), spec("edm", &zip));
        assert_eq!(data("afhq64/rfpp", &folder).unwrap(), spec("edm", &folder));
        // built-in datasets take no path
        let e = data("shapes/slimflow-demo", &folder)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shapes"), "{e}");
        let e = data("toy/checkerboard", &folder).unwrap_err().to_string();
        assert!(e.contains("no dataset"), "{e}");
    }

    #[test]
    fn facts_come_from_the_top_level_model_and_their_sections() {
        let text =
            "name = \"x\"\nmodel = \"edm-ncsnpp-ffhq64\"\n[data]\ndataset = \"edm:/d.zip\"\n\
                    [teacher]\nfrom = \"rfpp\"\nfile = \"f\"\n[reflow]\nmodel = \"other\"\n";
        let f = Facts::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(f.model.as_deref(), Some("edm-ncsnpp-ffhq64"));
        assert_eq!(f.dataset.as_deref(), Some("edm:/d.zip"));
        assert_eq!(f.teacher_from.as_deref(), Some("rfpp"));
        let f = Facts::parse("[model]\narch = \"mlp\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(f, Facts::default());
        assert!(Facts::parse("model = = 1", Path::new("x.toml")).is_err());
    }
}
