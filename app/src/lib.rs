//! The service registry of the `signpost` command: every service crate the
//! binary can run, in start order. Services are added here as their issues land.

use std::sync::Arc;

use kernel::Service;

/// Every service this build contains.
pub fn services() -> Vec<Arc<dyn Service>> {
    vec![
        Arc::new(identity::IdentityService),
        Arc::new(links::LinksService),
        Arc::new(routing::RoutingService),
        Arc::new(analytics::AnalyticsService),
        Arc::new(gateway::GatewayService),
    ]
}
