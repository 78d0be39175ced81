//! `keel auth`, `keel user`, `keel role` and `keel token`: the client side of
//! authentication and roles (docs/security.md).

use std::process::ExitCode;

use super::*;

/// `keel auth init|show|whoami`.
pub(crate) fn auth_cmd(g: &Global, command: AuthCmd) -> ExitCode {
    match command {
        AuthCmd::Init {
            token_file: Some(file),
        } => {
            let ctx = match Ctx::new(g) {
                Ok(c) => c,
                Err(e) => return fail("auth init", e),
            };
            let done = runtime()
                .and_then(|rt| rt.block_on(keel::auth::bootstrap::init(&mut ctx.client(), &file)));
            match done {
                Ok(keel::auth::bootstrap::Initialised::Done) => {
                    println!(
                        "authentication is on: user root's token is in {}",
                        file.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(keel::auth::bootstrap::Initialised::HadUsers(why)) => {
                    eprintln!("keel auth init: {why}");
                    ExitCode::from(exit::REFUSED)
                }
                Err(e) => ctx.failed("auth init", &e),
            }
        }
        AuthCmd::Init { token_file: None } => {
            client_call(g, "auth init", Shown::Raw, async move |c| {
                c.request(hyper::Method::POST, "/v1/auth/init", Vec::new())
                    .await
            })
        }
        AuthCmd::Show => client_call(g, "auth show", Shown::Raw, async move |c| {
            c.get("/v1/auth").await
        }),
        AuthCmd::Whoami => client_call(g, "auth whoami", Shown::Raw, async move |c| {
            c.get("/v1/auth/whoami").await
        }),
    }
}

/// `keel token create|revoke`.
pub(crate) fn token_cmd(g: &Global, command: TokenCmd) -> ExitCode {
    match command {
        TokenCmd::Create {
            user,
            label,
            out,
            ttl,
        } => {
            let ctx = match Ctx::new(g) {
                Ok(c) => c,
                Err(e) => return fail("token create", e),
            };
            let body = serde_json::json!({"user": user, "label": label, "ttl_ms": ttl}).to_string();
            let result = runtime().and_then(|rt| {
                rt.block_on(async {
                    ctx.client()
                        .request(hyper::Method::POST, "/v1/auth/tokens", body.into_bytes())
                        .await
                })
            });
            let answer = match result {
                Ok(a) => a,
                Err(e) => return ctx.failed("token create", &e),
            };
            let created: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
            let token = created.as_ref().and_then(|v| v["token"].as_str());
            match (answer.status.is_success(), token, &out) {
                (true, Some(token), Some(file)) => {
                    if let Err(e) = keel::auth::bootstrap::write_secret(file, token) {
                        return fail("token create", e);
                    }
                    let id = keel::auth::token_id_of(token).unwrap_or_default();
                    println!("token {id} for {user} written to {}", file.display());
                    ExitCode::SUCCESS
                }
                (true, Some(token), None) if ctx.output == Output::Table => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                _ => show(&ctx, "token create", &answer, Shown::Raw),
            }
        }
        TokenCmd::Revoke { id } => {
            // The id, or a whole token pasted by mistake: only its id travels.
            let id = keel::auth::token_id_of(&id).map_or(id.clone(), str::to_string);
            client_call(g, "token revoke", Shown::Raw, async move |c| {
                let path = format!("/v1/auth/tokens/{id}");
                c.request(hyper::Method::DELETE, &path, Vec::new()).await
            })
        }
    }
}

/// `keel user add|remove|grant|revoke`.
pub(crate) fn user_cmd(g: &Global, command: UserCmd) -> ExitCode {
    let (method, path, body) = match command {
        UserCmd::Add { name, roles } => (
            hyper::Method::POST,
            "/v1/auth/users".to_string(),
            serde_json::json!({"user": name, "roles": roles}).to_string(),
        ),
        UserCmd::Remove { name } => (
            hyper::Method::DELETE,
            format!("/v1/auth/users/{name}"),
            String::new(),
        ),
        UserCmd::Grant { name, role } => (
            hyper::Method::PUT,
            format!("/v1/auth/users/{name}/roles/{role}"),
            String::new(),
        ),
        UserCmd::Revoke { name, role } => (
            hyper::Method::DELETE,
            format!("/v1/auth/users/{name}/roles/{role}"),
            String::new(),
        ),
    };
    client_call(g, "user", Shown::Raw, async move |c| {
        c.request(method, &path, body.into_bytes()).await
    })
}

/// `keel role grant|revoke|remove`.
pub(crate) fn role_cmd(g: &Global, command: RoleCmd) -> ExitCode {
    let (method, role, permission, plugin) = match command {
        RoleCmd::Grant {
            role,
            permission,
            plugin,
        } => (hyper::Method::PUT, role, permission, plugin),
        RoleCmd::Revoke {
            role,
            permission,
            plugin,
        } => (hyper::Method::DELETE, role, permission, plugin),
        RoleCmd::Remove { role } => {
            return client_call(g, "role", Shown::Raw, async move |c| {
                let path = format!("/v1/auth/roles/{role}");
                c.request(hyper::Method::DELETE, &path, Vec::new()).await
            });
        }
    };
    let path = match keel::cli::grant_path(&role, &permission, plugin.as_deref()) {
        Ok(p) => p,
        Err(e) => return fail("role", e),
    };
    client_call(g, "role", Shown::Raw, async move |c| {
        c.request(method, &path, Vec::new()).await
    })
}
