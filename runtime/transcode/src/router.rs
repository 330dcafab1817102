//! Routes from (HTTP method, path) to a gRPC method and its binding.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, MethodDescriptor};

use crate::binding;
use crate::descriptor::{self, HttpMethodSpec, HttpRule};
use crate::error::{ConfigError, TranscodeError};
use crate::template::{PathTemplate, Specificity};

/// Where the HTTP request body goes in the request message.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body (`body` omitted): everything comes from the path and query.
    None,
    /// `body: "*"`: the body is the whole message, minus path-bound fields.
    Whole,
    /// `body: "field"`: the body is that top-level field.
    Field(FieldDescriptor),
}

/// One HTTP binding of a gRPC method.
#[derive(Debug, Clone)]
pub struct Route {
    method: MethodDescriptor,
    /// `None` matches any HTTP method (`custom { kind: "*" }`).
    http_method: Option<http::Method>,
    template: PathTemplate,
    /// The resolved field path of each template variable.
    variables: Vec<Vec<FieldDescriptor>>,
    body: BodyRule,
    response_body: Option<FieldDescriptor>,
    grpc_path: String,
}

impl Route {
    pub fn method(&self) -> &MethodDescriptor {
        &self.method
    }
    pub fn http_method(&self) -> Option<&http::Method> {
        self.http_method.as_ref()
    }
    pub fn template(&self) -> &PathTemplate {
        &self.template
    }
    pub fn body(&self) -> &BodyRule {
        &self.body
    }
    pub fn response_body(&self) -> Option<&FieldDescriptor> {
        self.response_body.as_ref()
    }
    /// The HTTP/2 `:path` of the gRPC call: `/package.Service/Method`.
    pub fn grpc_path(&self) -> &str {
        &self.grpc_path
    }
    pub(crate) fn variables(&self) -> &[Vec<FieldDescriptor>] {
        &self.variables
    }
}

/// A matched route and the decoded value of each template variable.
#[derive(Debug)]
pub struct RouteMatch<'r> {
    pub route: &'r Route,
    pub captures: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Routes every method of every service in the pool: the bindings of its
    /// `google.api.http` rule, or `POST /package.Service/Method` with
    /// `body: "*"` when it has none.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, ConfigError> {
        Router::from_services(pool, None)
    }

    /// As [`Router::from_pool`], for the named services only (full names,
    /// `package.Service`); `None` routes them all. A name the pool does not
    /// have is an error.
    pub fn from_services(
        pool: &DescriptorPool,
        only: Option<&[String]>,
    ) -> Result<Self, ConfigError> {
        if let Some(only) = only
            && let Some(missing) = only
                .iter()
                .find(|name| pool.get_service_by_name(name).is_none())
        {
            let known: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
            return Err(ConfigError::UnknownService {
                service: missing.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        let mut router = Router::default();
        let mut seen: HashMap<(String, String), String> = HashMap::new();
        let services = pool
            .services()
            .filter(|s| only.is_none_or(|only| only.iter().any(|n| n == s.full_name())));
        for service in services {
            for method in service.methods() {
                let rules = match descriptor::http_rule(&method)? {
                    Some(rule) => {
                        let mut all = vec![rule.clone()];
                        all.extend(rule.additional_bindings);
                        all
                    }
                    None => vec![HttpRule {
                        method: HttpMethodSpec::Post,
                        path: format!("/{}/{}", service.full_name(), method.name()),
                        body: "*".into(),
                        response_body: String::new(),
                        additional_bindings: Vec::new(),
                    }],
                };
                for rule in rules {
                    let route = Route::build(&method, &rule)?;
                    let key = (
                        route
                            .http_method
                            .as_ref()
                            .map_or("*".to_owned(), |m| m.to_string()),
                        route.template.shape(),
                    );
                    if let Some(first) = seen.insert(key.clone(), method.full_name().to_owned()) {
                        return Err(ConfigError::Conflict {
                            http_method: key.0,
                            template: route.template.to_string(),
                            first,
                            second: method.full_name().to_owned(),
                        });
                    }
                    router.routes.push(route);
                }
            }
        }
        Ok(router)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route for a raw path (no query string). Ties go to
    /// the binding declared first.
    pub fn find(
        &self,
        method: &http::Method,
        path: &str,
    ) -> Result<RouteMatch<'_>, TranscodeError> {
        let mut best: Option<(Specificity, RouteMatch<'_>)> = None;
        let mut path_matched = false;
        for route in &self.routes {
            let Some((captures, spec)) = route.template.matches(path) else {
                continue;
            };
            if route.http_method.as_ref().is_some_and(|m| m != method) {
                path_matched = true;
                continue;
            }
            if best.as_ref().is_none_or(|(b, _)| spec > *b) {
                best = Some((spec, RouteMatch { route, captures }));
            }
        }
        match best {
            Some((_, m)) => Ok(m),
            None if path_matched => Err(TranscodeError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_owned(),
            }),
            None => Err(TranscodeError::NotFound {
                method: method.to_string(),
                path: path.to_owned(),
            }),
        }
    }
}

impl Route {
    fn build(method: &MethodDescriptor, rule: &HttpRule) -> Result<Route, ConfigError> {
        let err = |message: String| ConfigError::Rule {
            method: method.full_name().to_owned(),
            message,
        };
        let template = PathTemplate::parse(&rule.path)?;
        let input = method.input();
        let mut variables = Vec::with_capacity(template.variables.len());
        for var in &template.variables {
            let fields = binding::resolve_path(&input, &var.field_path, false)
                .map_err(|m| err(format!("path variable {:?}: {m}", var.dotted())))?;
            let leaf = fields.last().expect("non-empty");
            if leaf.is_list() || leaf.is_map() || !binding::is_bindable_leaf(leaf) {
                return Err(err(format!(
                    "path variable {:?} must be a singular primitive field",
                    var.dotted()
                )));
            }
            variables.push(fields);
        }
        let body = match rule.body.as_str() {
            "" => BodyRule::None,
            "*" => BodyRule::Whole,
            name => BodyRule::Field(input.get_field_by_name(name).ok_or_else(|| {
                err(format!(
                    "body field {name:?} is not in {}",
                    input.full_name()
                ))
            })?),
        };
        let response_body = match rule.response_body.as_str() {
            "" => None,
            name => Some(method.output().get_field_by_name(name).ok_or_else(|| {
                err(format!(
                    "response_body field {name:?} is not in {}",
                    method.output().full_name()
                ))
            })?),
        };
        Ok(Route {
            method: method.clone(),
            http_method: rule.method.to_http().map_err(err)?,
            template,
            variables,
            body,
            response_body,
            grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        })
    }
}
