//! `%GRPC_STATUS%`: how Envoy prints a gRPC status code.

/// How `%GRPC_STATUS%` prints a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcFormat {
    Camel,
    Snake,
    Number,
}

/// Envoy's `GrpcStatusFormatter`: the code's name (`Grpc::Utility::grpcStatusToString`
/// spellings: `Canceled` in camel case, `CANCELLED` in snake case), its number for
/// NUMBER or a code beyond 16 (None here).
pub fn grpc_status(code: u32, f: GrpcFormat) -> Option<&'static str> {
    const CAMEL: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    const SNAKE: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let names = match f {
        GrpcFormat::Number => return None,
        GrpcFormat::Camel => &CAMEL,
        GrpcFormat::Snake => &SNAKE,
    };
    names.get(code as usize).copied()
}
