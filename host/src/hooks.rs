//! The hook table: every guest hook the proxy can call, as data. A hook's
//! row names its export and the Pingora phase that calls it; instances,
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
    /// The `ProxyHttp` phase that calls it.
    pub phase: &'static str,
    /// Whether a module may leave it out. A module that leaves out an
    /// optional hook is not called for it, and pays nothing.
    pub optional: bool,
}

/// Every hook, by [`Hook::index`].
pub const HOOKS: [HookSpec; Hook::COUNT] = [
    HookSpec {
        hook: Hook::RequestFilter,
        export: "request_filter",
        phase: "request_filter",
        optional: true,
    },
    // Optional for a module whose tenant has a static upstream: the
    // tenant checks that one of the two says where requests go.
    HookSpec {
        hook: Hook::UpstreamPeer,
        export: "upstream_peer",
        phase: "upstream_peer",
        optional: true,
    },
    HookSpec {
        hook: Hook::UpstreamRequestFilter,
        export: "upstream_request_filter",
        phase: "upstream_request_filter",
        optional: true,
    },
    HookSpec {
        hook: Hook::ResponseFilter,
        export: "response_filter",
        phase: "response_filter",
        optional: true,
    },
    HookSpec {
        hook: Hook::Logging,
        export: "logging",
        phase: "logging",
        optional: true,
    },
];

impl Hook {
    /// How many hooks there are.
    pub const COUNT: usize = 5;

    /// Every hook, in table order.
    pub const ALL: [Hook; Hook::COUNT] = [
        Hook::RequestFilter,
        Hook::UpstreamPeer,
        Hook::UpstreamRequestFilter,
        Hook::ResponseFilter,
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
