//! The `mirror`, `mirrorPercentage` / `mirrorPercent` and `mirrors[]` fields of a
//! VirtualService `http[]` route as Istio reads them (pilot/pkg/networking/core/route/
//! route.go builds Envoy's `request_mirror_policies` from them): the policies with their
//! shares, and what Istio's validation refuses. Sending the copies is the data path's
//! (`crate::http::mirror`).
use super::istio::{Destination, HttpRoute};

/// A compiled mirror policy.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: String,
    pub per_million: u32,
}

/// Istio's share of a percentage: `uint32(value * 10000)` per million.
fn per_million(pct: f64) -> u32 {
    (pct.clamp(0.0, 100.0) * 10_000.0) as u32
}

/// The route's mirror policies as Istio builds them: (path of the destination below
/// the route, destination, share per million), leaving out those with a share of 0.
pub fn policies(r: &HttpRoute) -> Vec<(String, &Destination, u32)> {
    let mut out = Vec::new();
    if let Some(d) = &r.mirror {
        let share = match (
            r.mirror_percentage,
            r.mirror_percent.or(r.mirror_percent_proto_name),
        ) {
            (Some(p), _) => per_million(p.value),
            (None, Some(n)) => per_million(f64::from(n)),
            (None, None) => 1_000_000,
        };
        out.push(("mirror".to_string(), d, share));
    }
    for (j, m) in r.mirrors.iter().enumerate() {
        let share = m.percentage.map_or(1_000_000, |p| per_million(p.value));
        out.push((format!("mirrors[{j}].destination"), &m.destination, share));
    }
    out.retain(|(.., share)| *share > 0);
    out
}

/// What Istio's validation refuses in a route's mirror fields, as (path below the
/// route, message).
pub fn problems(r: &HttpRoute) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        out.push((
            "mirrors".into(),
            "HTTP route cannot contain both mirror and mirrors".into(),
        ));
    }
    let mut pct = |path: String, v: f64| {
        if !(0.0..=100.0).contains(&v) {
            out.push((
                path,
                format!("mirror percentage must be between 0 and 100 (it has {v})"),
            ));
        }
    };
    if let Some(p) = r.mirror_percentage {
        pct("mirrorPercentage.value".into(), p.value);
    }
    if let Some(n) = r.mirror_percent {
        pct("mirrorPercent".into(), f64::from(n));
    }
    if let Some(n) = r.mirror_percent_proto_name {
        pct("mirror_percent".into(), f64::from(n));
    }
    for (j, m) in r.mirrors.iter().enumerate() {
        if let Some(p) = m.percentage {
            pct(format!("mirrors[{j}].percentage.value"), p.value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_istio() {
        let r: HttpRoute = serde_yaml::from_str(
            "mirror: {host: a}\nmirrorPercentage: {value: 12.5}\nroute: [{destination: {host: b}}]",
        )
        .unwrap();
        let p = policies(&r);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0.as_str(), p[0].2), ("mirror", 125_000));

        let r: HttpRoute = serde_yaml::from_str("mirror: {host: a}\nmirrorPercent: 30").unwrap();
        assert_eq!(policies(&r)[0].2, 300_000);
        let r: HttpRoute = serde_yaml::from_str("mirror: {host: a}").unwrap();
        assert_eq!(policies(&r)[0].2, 1_000_000);
        // An explicit 0 sends nothing.
        let r: HttpRoute =
            serde_yaml::from_str("mirror: {host: a}\nmirrorPercentage: {value: 0}").unwrap();
        assert!(policies(&r).is_empty());

        let r: HttpRoute = serde_yaml::from_str(
            "mirrors:\n- destination: {host: a}\n- destination: {host: b}\n  percentage: {value: 50}\n- destination: {host: c}\n  percentage: {value: 0}",
        )
        .unwrap();
        let p: Vec<_> = policies(&r)
            .into_iter()
            .map(|(path, d, s)| (path, d.host.clone(), s))
            .collect();
        assert_eq!(
            p,
            [
                (
                    "mirrors[0].destination".to_string(),
                    "a".to_string(),
                    1_000_000
                ),
                (
                    "mirrors[1].destination".to_string(),
                    "b".to_string(),
                    500_000
                ),
            ]
        );
    }

    #[test]
    fn bad_mirror_fields_are_refused() {
        let r: HttpRoute = serde_yaml::from_str(
            "mirror: {host: a}\nmirrorPercentage: {value: 101}\nmirrors: [{destination: {host: b}, percentage: {value: -1}}]",
        )
        .unwrap();
        let paths: Vec<_> = problems(&r).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "mirrors",
                "mirrorPercentage.value",
                "mirrors[0].percentage.value"
            ]
        );
    }
}
