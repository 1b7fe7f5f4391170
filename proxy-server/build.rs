// The same revision stamp as the client's (one script for both binaries).
include!("../proxy-client/build.rs");
