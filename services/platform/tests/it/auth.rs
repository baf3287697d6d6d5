//! Tokens through a real gRPC server: missing, expired, tampered, other clinic, wrong role.

use followup_platform::auth::{Role, caller};
use followup_platform::grpc::{GrpcServices, not_found};
use followup_platform::testkit::{TestEnv, authed};
use followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient;
use followup_proto::followup::engagement::v1::engagement_service_server::{
    EngagementService, EngagementServiceServer,
};
use followup_proto::followup::engagement::v1::{
    GetPlanEngagementRequest, GetPlanEngagementResponse,
};
use tonic::{Code, Request, Response, Status};

use crate::support::platform;

/// A service owning one plan, `p1` of clinic `c1`, readable by front desk and dentists only.
struct OnePlan;

#[tonic::async_trait]
impl EngagementService for OnePlan {
    async fn get_plan_engagement(
        &self,
        request: Request<GetPlanEngagementRequest>,
    ) -> Result<Response<GetPlanEngagementResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::FrontDesk, Role::Dentist])?;
        let plan_id = &request.get_ref().plan_id;
        if caller.tenant != "c1" || plan_id != "p1" {
            return Err(not_found("plan", plan_id));
        }
        Ok(Response::new(GetPlanEngagementResponse::default()))
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_with_the_right_code() {
    let env = TestEnv::start().await;
    let platform = platform(&env).await;
    let api = EngagementServiceServer::with_interceptor(OnePlan, platform.authenticator());
    let running = platform
        .serve(GrpcServices::new().with(api), vec![])
        .await
        .unwrap();
    let mut client = EngagementServiceClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap();
    let ask = || GetPlanEngagementRequest {
        plan_id: "p1".into(),
    };

    let good = env.auth.token("c1", Role::FrontDesk);
    assert!(
        client
            .get_plan_engagement(authed(ask(), &good))
            .await
            .is_ok()
    );

    let missing = client.get_plan_engagement(ask()).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("authorization"),
        "{}",
        missing.message()
    );

    let expired = client
        .get_plan_engagement(authed(
            ask(),
            &env.auth.expired_token("c1", Role::FrontDesk),
        ))
        .await;
    let expired = expired.unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );

    let mut parts: Vec<&str> = good.split('.').collect();
    let owner = env.auth.token("c1", Role::Owner);
    parts[1] = owner.split('.').nth(1).unwrap();
    let tampered = client
        .get_plan_engagement(authed(ask(), &parts.join(".")))
        .await
        .unwrap_err();
    assert_eq!(tampered.code(), Code::Unauthenticated);

    let stranger = followup_platform::testkit::TestAuth::new().token("c1", Role::FrontDesk);
    let foreign_key = client
        .get_plan_engagement(authed(ask(), &stranger))
        .await
        .unwrap_err();
    assert_eq!(foreign_key.code(), Code::Unauthenticated);

    let other_clinic = client
        .get_plan_engagement(authed(ask(), &env.auth.token("c2", Role::FrontDesk)))
        .await;
    assert_eq!(
        other_clinic.unwrap_err().code(),
        Code::NotFound,
        "clinic B never sees clinic A's plan"
    );

    let wrong_role = client
        .get_plan_engagement(authed(ask(), &env.auth.token("c1", Role::System)))
        .await;
    let wrong_role = wrong_role.unwrap_err();
    assert_eq!(wrong_role.code(), Code::PermissionDenied);
    assert!(
        wrong_role.message().contains("front_desk"),
        "{}",
        wrong_role.message()
    );

    // An RPC the service has not written answers UNIMPLEMENTED, after authentication.
    let unwritten = client
        .list_view_sessions(authed(Default::default(), &good))
        .await
        .unwrap_err();
    assert_eq!(unwritten.code(), Code::Unimplemented);

    let (_, text) = crate::support::get(running.admin_addr, "/metrics").await;
    assert!(text.contains("code=\"PermissionDenied\""), "{text}");
    running.stop().await;
}
