//! The two papers' LPIPS variants by name, so configs can say `"slimflow"` or `"rfpp"` instead of
//! spelling out backbone, pooling and resize.

use serde::{Deserialize, Serialize};

use super::LpipsConfig;

/// A named LPIPS variant (serialised as `slimflow` / `rfpp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LpipsPreset {
    /// SlimFlow: VGG, max pooling, inputs resized to 64×64 (align_corners = true).
    Slimflow,
    /// 2-rectified flow++: VGG with average pooling, inputs resized to 224×224.
    Rfpp,
}

impl LpipsPreset {
    /// The network configuration.
    pub fn config(self) -> LpipsConfig {
        match self {
            LpipsPreset::Slimflow => LpipsConfig::slimflow(),
            LpipsPreset::Rfpp => LpipsConfig::rfpp(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Pooling, Resize};
    use super::*;

    #[test]
    fn presets_map_to_the_papers_networks() {
        let s = LpipsPreset::Slimflow.config();
        assert_eq!(s.pooling, Pooling::Max);
        assert_eq!(
            s.resize,
            Some(Resize {
                size: 64,
                align_corners: true
            })
        );
        let r = LpipsPreset::Rfpp.config();
        assert_eq!(r.pooling, Pooling::Avg);
        assert_eq!(r.resize.map(|r| r.size), Some(224));
        let names: Vec<String> = [LpipsPreset::Slimflow, LpipsPreset::Rfpp]
            .iter()
            .map(|p| serde_json::to_string(p).unwrap_or_default())
            .collect();
        assert_eq!(names, ["\"slimflow\"", "\"rfpp\""]);
    }
}
