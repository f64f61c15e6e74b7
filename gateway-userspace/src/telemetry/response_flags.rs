//! Envoy's response flags (`%RESPONSE_FLAGS%`, Istio's `response_flags` label): what
//! went wrong with a request or flow, as a set printed in Envoy's order.
//!
//! Envoy keeps them as a bitset and prints the set ones in the order of its list
//! (`ResponseFlagUtils::ALL_RESPONSE_STRINGS_FLAGS`, source/common/stream_info/utility.h),
//! joined by commas, `-` for none: `UF,URX` whichever was set first.
use std::fmt;

/// One flag. Declared in Envoy's order, which is the order a set prints in; only the
/// flags the gateway sets are here (Envoy's LH, LR, UR, RL, UAEX, ... never are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseFlag {
    /// `UH`: no healthy upstream (the cluster has no endpoint).
    NoHealthyUpstream,
    /// `UT`: the route's (or the try's) timeout passed.
    UpstreamRequestTimeout,
    /// `UF`: the upstream connection failed.
    UpstreamConnectionFailure,
    /// `UC`: the upstream connection ended before the response.
    UpstreamConnectionTermination,
    /// `UO`: the cluster's circuit breakers refused (overflow).
    UpstreamOverflow,
    /// `NR`: no route (no virtual host, route, filter chain or destination).
    NoRouteFound,
    /// `DI`: a fault filter delay.
    DelayInjected,
    /// `FI`: a fault filter abort.
    FaultInjected,
    /// `DC`: the client went away.
    DownstreamConnectionTermination,
    /// `URX`: retries ran out.
    UpstreamRetryLimitExceeded,
    /// `SI`: the stream idle timeout fired.
    StreamIdleTimeout,
    /// `DPE`: the client's HTTP could not be parsed.
    DownstreamProtocolError,
    /// `DT`: closed at the cluster's `maxConnectionDuration`.
    DurationTimeout,
    /// `UPE`: the upstream's HTTP was wrong (an unasked 101, a broken body).
    UpstreamProtocolError,
    /// `NC`: the route's cluster does not exist.
    NoClusterFound,
    /// `RBAC`: refused by AuthorizationPolicy. Not one of Envoy's (its RBAC filter sets
    /// only the details); the gateway's own, after Envoy's as Envoy's custom flags are.
    RbacAccessDenied,
}

impl ResponseFlag {
    /// Every flag, in Envoy's order.
    pub const ALL: [ResponseFlag; 16] = [
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamRequestTimeout,
        ResponseFlag::UpstreamConnectionFailure,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::UpstreamOverflow,
        ResponseFlag::NoRouteFound,
        ResponseFlag::DelayInjected,
        ResponseFlag::FaultInjected,
        ResponseFlag::DownstreamConnectionTermination,
        ResponseFlag::UpstreamRetryLimitExceeded,
        ResponseFlag::StreamIdleTimeout,
        ResponseFlag::DownstreamProtocolError,
        ResponseFlag::DurationTimeout,
        ResponseFlag::UpstreamProtocolError,
        ResponseFlag::NoClusterFound,
        ResponseFlag::RbacAccessDenied,
    ];

    /// Envoy's short code.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::DownstreamConnectionTermination => "DC",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::StreamIdleTimeout => "SI",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::DurationTimeout => "DT",
            ResponseFlag::UpstreamProtocolError => "UPE",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::RbacAccessDenied => "RBAC",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u8
    }
}

/// The flags of one request or flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    pub fn insert(&mut self, f: ResponseFlag) {
        self.0 |= f.bit();
    }

    pub fn contains(self, f: ResponseFlag) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags set, in Envoy's order.
    pub fn iter(self) -> impl Iterator<Item = ResponseFlag> {
        ResponseFlag::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }

    /// `UF,URX`; empty for none (what `response.flags` compares in a log filter).
    pub fn joined(self) -> String {
        let mut s = String::new();
        for f in self.iter() {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(f.as_str());
        }
        s
    }
}

impl From<ResponseFlag> for ResponseFlags {
    fn from(f: ResponseFlag) -> ResponseFlags {
        ResponseFlags(f.bit())
    }
}

/// As Envoy prints `%RESPONSE_FLAGS%`: `UF,URX`, or `-` for none.
impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, flag) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{ResponseFlag::*, *};

    fn set(flags: &[ResponseFlag]) -> ResponseFlags {
        let mut s = ResponseFlags::default();
        for f in flags {
            s.insert(*f);
        }
        s
    }

    #[test]
    fn printed_in_envoys_order_whatever_the_order_they_were_set_in() {
        assert_eq!(ResponseFlags::default().to_string(), "-");
        assert_eq!(ResponseFlags::default().joined(), "");
        assert_eq!(set(&[NoRouteFound]).to_string(), "NR");
        // The combinations the data path makes (http/upstream.rs).
        assert_eq!(
            set(&[UpstreamRetryLimitExceeded, UpstreamConnectionFailure]).to_string(),
            "UF,URX"
        );
        assert_eq!(
            set(&[UpstreamRetryLimitExceeded, UpstreamRequestTimeout]).to_string(),
            "UT,URX"
        );
        assert_eq!(
            set(&[DelayInjected, FaultInjected]).joined(),
            "DI,FI".to_string()
        );
        assert_eq!(
            set(&[UpstreamRetryLimitExceeded, DownstreamConnectionTermination]).to_string(),
            "DC,URX"
        );
        assert_eq!(
            set(&[StreamIdleTimeout, DelayInjected, NoHealthyUpstream]).to_string(),
            "UH,DI,SI"
        );
        // Setting twice is setting once.
        assert_eq!(set(&[DurationTimeout, DurationTimeout]).to_string(), "DT");
    }

    /// Envoy's list, in its order (utility.h ALL_RESPONSE_STRINGS_FLAGS), with the
    /// flags the gateway does not set left out; the gateway's RBAC comes last.
    #[test]
    fn the_order_is_envoys() {
        let envoy = [
            "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
            "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF",
            "DO", "DR", "UDO", "RBAC",
        ];
        let ours: Vec<&str> = ResponseFlag::ALL.iter().map(|f| f.as_str()).collect();
        let in_envoy_order: Vec<&str> =
            envoy.iter().copied().filter(|e| ours.contains(e)).collect();
        assert_eq!(ours, in_envoy_order);
        assert_eq!(
            set(&ResponseFlag::ALL).to_string(),
            "UH,UT,UF,UC,UO,NR,DI,FI,DC,URX,SI,DPE,DT,UPE,NC,RBAC"
        );
    }
}
