//! The hook table: every guest hook the proxy can call, as data. A hook's
//! export is named after the Pingora `ProxyHttp` phase that calls it, and
//! every hook is optional (a module that leaves one out pays nothing for
//! it; the tenant checks that the module or a static upstream says where
//! requests go); instances,
//! metrics and the proxy hold per-hook arrays indexed by [`Hook`], so a
//! new hook is a new row here and its call in `proxy.rs`.

use std::fmt;

/// A guest hook, in the order a request meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// The downstream request, before routing: change it, answer it, or
    /// refuse it.
    RequestFilter,
    /// Where the request goes.
    UpstreamPeer,
    /// Changes to the request sent upstream.
    UpstreamRequestFilter,
    /// Changes to the response sent downstream.
    ResponseFilter,
    /// Changes to the response's trailers (an HTTP/2 upstream's: a gRPC
    /// call's status and trailing metadata).
    ResponseTrailerFilter,
    /// How the request ended; changes nothing.
    Logging,
}

/// One row of the hook table.
#[derive(Debug)]
pub struct HookSpec {
    /// The hook this row describes.
    pub hook: Hook,
    /// The guest export that runs it.
    pub export: &'static str,
}

/// Every hook, by [`Hook::index`].
pub const HOOKS: [HookSpec; Hook::COUNT] = [
    HookSpec {
        hook: Hook::RequestFilter,
        export: "request_filter",
    },
    HookSpec {
        hook: Hook::UpstreamPeer,
        export: "upstream_peer",
    },
    HookSpec {
        hook: Hook::UpstreamRequestFilter,
        export: "upstream_request_filter",
    },
    HookSpec {
        hook: Hook::ResponseFilter,
        export: "response_filter",
    },
    HookSpec {
        hook: Hook::ResponseTrailerFilter,
        export: "response_trailer_filter",
    },
    HookSpec {
        hook: Hook::Logging,
        export: "logging",
    },
];

impl Hook {
    /// How many hooks there are.
    pub const COUNT: usize = 6;

    /// Every hook, in table order.
    pub const ALL: [Hook; Hook::COUNT] = [
        Hook::RequestFilter,
        Hook::UpstreamPeer,
        Hook::UpstreamRequestFilter,
        Hook::ResponseFilter,
        Hook::ResponseTrailerFilter,
        Hook::Logging,
    ];

    /// Its position in [`HOOKS`] and in per-hook arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Its row of the table.
    pub fn spec(self) -> &'static HookSpec {
        &HOOKS[self.index()]
    }

    /// The guest export that runs it.
    pub fn export(self) -> &'static str {
        self.spec().export
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.export())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_indexed_by_hook() {
        for (index, hook) in Hook::ALL.into_iter().enumerate() {
            assert_eq!(hook.index(), index);
            assert_eq!(HOOKS[index].hook, hook);
        }
    }
}
