//! The site tier (issue 14): many VM hosts fetch block payloads through a standard HTTP
//! cache instead of each pulling them across the WAN from the store.
//!
//! ```text
//! host cache/ --miss--> tier/fetch (HTTP GET by id) --> Squid / nginx / Varnish ... -->
//!     tier/serve on the site (a gridvfs client: its cache -> remote -> tunnel -> store)
//!   \--fallback: the host's own session (remote/)
//! ```
//!
//! Names, attributes and the manifest (the store's block sums, `cache/manifest.rs`) still
//! travel over each host's authenticated session; only sealed block payloads ([`seal`])
//! cross the tier, so caches hold ciphertext under ids that reveal nothing.

pub mod fetch;
pub mod seal;
pub mod serve;

pub use fetch::{Locator, Tier, TierError, TierStats};
pub use serve::{Site, SiteStats};
