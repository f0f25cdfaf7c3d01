//! The wire numbers of proxy-wasm v0.2.1 as types: the status a hostcall
//! returns, the header maps and buffers a filter names, log levels and
//! metric kinds. Names and numbers are the spec's (and the Rust SDK's
//! `src/types.rs`). A number this host does not know converts to the
//! status the hostcall returns for it.

/// `proxy_status_t`: what a hostcall returns (the ones this host uses).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It worked.
    Ok = 0,
    /// No such map, buffer, key, metric or stream.
    NotFound = 1,
    /// An argument is out of range or malformed.
    BadArgument = 2,
    /// `proxy_grpc_call`: a destination not granted, or names or metadata
    /// that cannot be sent.
    ParseFailure = 4,
    /// A pointer or size from the guest lies outside its memory.
    InvalidMemoryAccess = 6,
    /// `proxy_dequeue_shared_queue`: the queue holds nothing.
    Empty = 7,
    /// `proxy_set_shared_data`'s CAS did not match.
    CasMismatch = 8,
    /// The host cannot do it (also every unimplemented hostcall: the
    /// Rust SDK has no `Unimplemented`).
    InternalFailure = 10,
}

impl Status {
    /// The number a hostcall returns for `result`.
    #[inline]
    pub fn code(result: Result<(), Status>) -> i32 {
        match result {
            Ok(()) => Status::Ok as i32,
            Err(status) => status as i32,
        }
    }
}

impl From<Status> for i32 {
    fn from(status: Status) -> i32 {
        status as i32
    }
}

/// A wire enum: its variants and numbers, and `TryFrom<i32>` that gives
/// `$unknown` for any other number.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident as $repr:ident, unknown: $error:ty = $unknown:expr;
        $($(#[$variant_meta:meta])* $variant:ident = $number:literal,)*
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum $name {
            $($(#[$variant_meta])* $variant = $number,)*
        }

        impl TryFrom<i32> for $name {
            type Error = $error;

            fn try_from(number: i32) -> Result<Self, $error> {
                match number {
                    $($number => Ok($name::$variant),)*
                    _ => Err($unknown),
                }
            }
        }
    };
}

wire_enum! {
    /// `proxy_map_type_t`: the header maps a filter names. An unknown one
    /// is `NOT_FOUND`, like a map this host does not keep (the spec says
    /// `BAD_ARGUMENT`; see docs/PROXY_WASM.md).
    MapType as i32, unknown: Status = Status::NotFound;
    /// The request's headers, pseudo-headers first.
    HttpRequestHeaders = 0,
    /// The request's trailers (not kept here).
    HttpRequestTrailers = 1,
    /// The response's headers, `:status` first.
    HttpResponseHeaders = 2,
    /// The response's trailers (not kept here).
    HttpResponseTrailers = 3,
    /// gRPC initial metadata (not kept here).
    GrpcReceiveInitialMetadata = 4,
    /// gRPC trailing metadata (not kept here).
    GrpcReceiveTrailingMetadata = 5,
    /// The headers of the HTTP call response being delivered.
    HttpCallResponseHeaders = 6,
    /// The trailers of an HTTP call response (not kept here).
    HttpCallResponseTrailers = 7,
}

wire_enum! {
    /// `proxy_buffer_type_t`: the buffers a filter names. An unknown one
    /// is `NOT_FOUND`, like a buffer this host does not keep (the spec
    /// says `BAD_ARGUMENT`; see docs/PROXY_WASM.md).
    BufferType as i32, unknown: Status = Status::NotFound;
    /// The request body buffered so far.
    HttpRequestBody = 0,
    /// The response body buffered so far.
    HttpResponseBody = 1,
    /// TCP data from the client (no TCP filters here).
    DownstreamData = 2,
    /// TCP data from the upstream (no TCP filters here).
    UpstreamData = 3,
    /// The body of the HTTP call response being delivered.
    HttpCallResponseBody = 4,
    /// The message of the gRPC call being delivered.
    GrpcReceiveBuffer = 5,
    /// The VM configuration (`on_vm_start`).
    VmConfiguration = 6,
    /// The plugin configuration (`on_configure`).
    PluginConfiguration = 7,
    /// A foreign function's arguments (no foreign functions here).
    CallData = 8,
}

wire_enum! {
    /// `proxy_log_level_t`. An unknown level is logged at error with `OK`
    /// (the spec says `BAD_ARGUMENT`), so it converts to no status.
    LogLevel as u32, unknown: () = ();
    /// 0.
    Trace = 0,
    /// 1.
    Debug = 1,
    /// 2.
    Info = 2,
    /// 3.
    Warn = 3,
    /// 4.
    Error = 4,
    /// 5: logged at error.
    Critical = 5,
}

impl LogLevel {
    /// The level a filter's line is logged at: an unknown one at error.
    pub(super) fn of_line(number: i32) -> log::Level {
        match LogLevel::try_from(number) {
            Ok(LogLevel::Trace) => log::Level::Trace,
            Ok(LogLevel::Debug) => log::Level::Debug,
            Ok(LogLevel::Info) => log::Level::Info,
            Ok(LogLevel::Warn) => log::Level::Warn,
            Ok(LogLevel::Error | LogLevel::Critical) | Err(()) => log::Level::Error,
        }
    }

    /// The level a filter is told the proxy logs at.
    pub(super) fn of_filter(filter: log::LevelFilter) -> LogLevel {
        match filter {
            log::LevelFilter::Trace => LogLevel::Trace,
            log::LevelFilter::Debug => LogLevel::Debug,
            log::LevelFilter::Info => LogLevel::Info,
            log::LevelFilter::Warn => LogLevel::Warn,
            log::LevelFilter::Error | log::LevelFilter::Off => LogLevel::Error,
        }
    }
}

wire_enum! {
    /// `proxy_metric_type_t`. An unknown kind is `BAD_ARGUMENT`.
    MetricType as i32, unknown: Status = Status::BadArgument;
    /// 0.
    Counter = 0,
    /// 1.
    Gauge = 1,
    /// 2: exported as a gauge of the last value.
    Histogram = 2,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_number_converts_to_itself_and_others_to_todays_status() {
        for number in -1..=12 {
            match MapType::try_from(number) {
                Ok(map) => assert_eq!(map as i32, number),
                Err(status) => {
                    assert!(!(0..=7).contains(&number), "{number}");
                    assert_eq!(status, Status::NotFound);
                }
            }
            match BufferType::try_from(number) {
                Ok(buffer) => assert_eq!(buffer as i32, number),
                Err(status) => {
                    assert!(!(0..=8).contains(&number), "{number}");
                    assert_eq!(status, Status::NotFound);
                }
            }
            match MetricType::try_from(number) {
                Ok(kind) => assert_eq!(kind as i32, number),
                Err(status) => {
                    assert!(!(0..=2).contains(&number), "{number}");
                    assert_eq!(status, Status::BadArgument);
                }
            }
            match LogLevel::try_from(number) {
                Ok(level) => assert_eq!(level as i32, number),
                Err(()) => assert!(!(0..=5).contains(&number), "{number}"),
            }
        }
        assert_eq!(MapType::try_from(i32::MIN), Err(Status::NotFound));
        assert_eq!(BufferType::try_from(i32::MAX), Err(Status::NotFound));
    }

    #[test]
    fn statuses_are_the_specs_numbers() {
        let spec = [
            (Status::Ok, 0),
            (Status::NotFound, 1),
            (Status::BadArgument, 2),
            (Status::InvalidMemoryAccess, 6),
            (Status::CasMismatch, 8),
            (Status::InternalFailure, 10),
        ];
        for (status, number) in spec {
            assert_eq!(i32::from(status), number);
            assert_eq!(Status::code(Err(status)), number);
        }
        assert_eq!(Status::code(Ok(())), 0);
    }

    #[test]
    fn log_levels_map_as_before() {
        let lines = [
            (0, log::Level::Trace),
            (1, log::Level::Debug),
            (2, log::Level::Info),
            (3, log::Level::Warn),
            (4, log::Level::Error),
            (5, log::Level::Error),
            (6, log::Level::Error),
            (-1, log::Level::Error),
        ];
        for (number, level) in lines {
            assert_eq!(LogLevel::of_line(number), level, "{number}");
        }
        let filters = [
            (log::LevelFilter::Trace, 0),
            (log::LevelFilter::Debug, 1),
            (log::LevelFilter::Info, 2),
            (log::LevelFilter::Warn, 3),
            (log::LevelFilter::Error, 4),
            (log::LevelFilter::Off, 4),
        ];
        for (filter, number) in filters {
            assert_eq!(LogLevel::of_filter(filter) as u32, number, "{filter}");
        }
    }
}
