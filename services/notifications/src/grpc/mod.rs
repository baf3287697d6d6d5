//! The gRPC edge of the notifications service.

use followup_platform::auth::Authenticator;
use followup_platform::grpc::GrpcServices;
use followup_proto::followup::notifications::v1::notifications_service_server::{
    NotificationsService, NotificationsServiceServer,
};

use crate::state::App;

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator, app: App) -> GrpcServices {
    GrpcServices::new().with(NotificationsServiceServer::with_interceptor(
        NotificationsServiceApi { app },
        auth.clone(),
    ))
}

/// Money for people: "1,250.00 USD" style without a locale: minor units over 100 and the currency.
pub fn money_text(amount_minor: i64, currency: &str) -> String {
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", abs / 100, abs % 100)
}

/// `followup.notifications.v1.NotificationsService`.
#[derive(Clone)]
pub struct NotificationsServiceApi {
    pub app: App,
}

#[tonic::async_trait]
impl NotificationsService for NotificationsServiceApi {}
