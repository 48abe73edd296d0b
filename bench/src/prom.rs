//! Reads the server's own view from `GET /metrics` (Prometheus text): counters and the
//! ingress-to-assignment histogram, compared before and after a run.

use std::collections::BTreeMap;

/// Every sample of a scrape: `name{labels}` -> value.
#[derive(Debug, Clone, Default)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Parses the text exposition format (comments and malformed lines are skipped).
    pub fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Ok(v) = value.trim().parse::<f64>() {
                samples.insert(series.trim().to_owned(), v);
            }
        }
        Scrape(samples)
    }

    /// `self - before`, sample by sample (samples missing before count from 0).
    pub fn since(&self, before: &Scrape) -> Scrape {
        Scrape(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// Sum of the samples of `name` whose labels contain every `label="value"` of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series_name(series) == name
                    && labels
                        .iter()
                        .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Cumulative buckets `(le, count)` of histogram `name`, summed over its other labels.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (series, v) in &self.0 {
            if series_name(series) != bucket {
                continue;
            }
            let Some(le) = label(series, "le") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(x) => x,
                    Err(_) => continue,
                }
            };
            let entry = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            entry.1 += v;
        }
        let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// The `q` quantile of histogram `name`, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` when it holds no observations.
    pub fn quantile(&self, name: &str, q: f64) -> Option<f64> {
        let buckets = self.buckets(name);
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, count) in &buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let in_bucket = count - prev.1;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1) / in_bucket
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, count);
        }
        None
    }
}

fn series_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

fn label<'a>(series: &'a str, key: &str) -> Option<&'a str> {
    let start = series.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = series.get(start..)?;
    rest.get(..rest.find('"')?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x
switchyard_router_messages_total{outcome="routed"} 10
switchyard_h_bucket{pool="default",le="0.001"} 50
switchyard_h_bucket{pool="default",le="0.01"} 100
switchyard_h_bucket{pool="default",le="+Inf"} 100
switchyard_h_count{pool="default"} 100
"#;

    #[test]
    fn counters_and_quantiles() {
        let s = Scrape::parse(TEXT);
        assert_eq!(
            s.sum("switchyard_router_messages_total", &[("outcome", "routed")]),
            10.0
        );
        let p50 = s.quantile("switchyard_h", 0.5).expect("p50");
        assert!((p50 - 0.001).abs() < 1e-9);
        let p75 = s.quantile("switchyard_h", 0.75).expect("p75");
        assert!((p75 - 0.0055).abs() < 1e-9);
        let delta = s.since(&s);
        assert_eq!(delta.quantile("switchyard_h", 0.5), None);
    }
}
