#include "edge-agent/local_api.h"

#include <httplib.h>

#include <charconv>

#include "common/problem.h"
#include "common/validation.h"
#include "edge-agent/ui_assets.h"
#include "sync/protocol.h"

namespace pp::agent {
namespace {

using httplib::Request;
using httplib::Response;
using nlohmann::json;

constexpr size_t kMaxBody = 64 * 1024;

void Problem(Response& res, const Error& e, const std::string& path) {
  // A full queue is the device's state, not the request's size: 503.
  int status = e.code == Code::kResourceExhausted ? 503 : HttpStatusOf(e);
  res.status = status;
  res.set_content(ProblemJson(status, e, path), "application/problem+json");
}

bool LoopbackHost(const std::string& host) {
  std::string name = host.substr(0, host.rfind(':'));
  return name == "127.0.0.1" || name == "localhost" || name == "[::1]";
}

}  // namespace

LocalApi::LocalApi(Agent& agent) : agent_(agent), server_(std::make_unique<httplib::Server>()) {
  auto& s = *server_;
  s.set_payload_max_length(kMaxBody);
  s.set_tcp_nodelay(true);  // else each kept-alive response waits ~40 ms on Nagle (see the hub's HttpApi)
  s.set_pre_routing_handler([](const Request& req, Response& res) {
    if (!LoopbackHost(req.get_header_value("Host"))) {
      Problem(res, Error{Code::kPermissionDenied, "Host must be 127.0.0.1 or localhost", {}, {}}, req.path);
      return httplib::Server::HandlerResponse::Handled;
    }
    if ((req.method == "POST" || req.method == "PUT") &&
        req.get_header_value("Content-Type").rfind("application/json", 0) != 0) {
      res.status = 415;
      res.set_content(ProblemJson(415, Error::Invalid("Content-Type must be application/json"), req.path),
                      "application/problem+json");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  for (const auto& asset : UiAssets()) {
    std::string path = asset.name == "index.html" ? "/" : "/" + std::string(asset.name);
    std::string_view body = asset.body, type = asset.content_type;
    s.Get(path, [body, type](const Request&, Response& res) {
      res.set_content(body.data(), body.size(), std::string(type).c_str());
      res.set_header("Cache-Control", "no-store");
      res.set_header("Content-Security-Policy", "default-src 'self'");
    });
  }

  s.Get("/api/state", [this](const Request& req, Response& res) {
    auto st = agent_.State();
    if (!st.ok()) return Problem(res, st.error(), req.path);
    res.set_content(st->dump(), "application/json");
  });

  auto submit = [this](const Request& req, Response& res, const std::string& type, json body) {
    auto q = agent_.Submit(type, std::move(body));
    if (!q.ok()) return Problem(res, q.error(), req.path);
    res.status = 202;
    res.set_content(json{{"status", "queued"}, {"op", q->op}, {"seq", q->seq}, {"type", type}}.dump(),
                    "application/json");
  };
  auto parse = [](const Request& req, Response& res, bool allow_empty) -> std::optional<json> {
    if (allow_empty && req.body.empty()) return json::object();
    auto j = ParseJsonObject(req.body, "body");
    if (!j.ok()) {
      Problem(res, j.error(), req.path);
      return std::nullopt;
    }
    return std::move(*j);
  };

  s.Post("/api/posts", [submit, parse](const Request& req, Response& res) {
    if (auto body = parse(req, res, false)) submit(req, res, sync::kOpPostSurplus, std::move(*body));
  });
  s.Put("/api/vehicle", [submit, parse](const Request& req, Response& res) {
    if (auto body = parse(req, res, false)) submit(req, res, sync::kOpVehicle, std::move(*body));
  });
  s.Post(R"(/api/surplus/(\d{1,18})/(claim|accept|decline|release|pickup|deliver))",
         [submit, parse](const Request& req, Response& res) {
           auto body = parse(req, res, true);
           if (!body) return;
           const std::string id = req.matches[1];
           int64_t v = 0;
           std::from_chars(id.data(), id.data() + id.size(), v);
           (*body)["surplus_id"] = v;
           submit(req, res, req.matches[2], std::move(*body));
         });

  s.set_error_handler([](const Request& req, Response& res) {
    if (res.status == 404)
      Problem(res, Error::NotFound("no route " + req.method + " " + req.path), req.path);
    else if (res.status == 413)
      res.set_content(ProblemJson(413, Error{Code::kResourceExhausted, "body larger than 64 KiB", {}, {}},
                                  req.path),
                      "application/problem+json");
  });
}

LocalApi::~LocalApi() { Stop(); }

Status LocalApi::Bind(const std::string& host, int port) {
  if (port == 0) {
    port_ = server_->bind_to_any_port(host.c_str());
    if (port_ <= 0) return Error::Unavailable("cannot bind " + host);
  } else {
    if (!server_->bind_to_port(host.c_str(), port))
      return Error::Unavailable("cannot listen on " + host + ":" + std::to_string(port) +
                                " (in use?)");
    port_ = port;
  }
  return OkStatus();
}

void LocalApi::Serve() { server_->listen_after_bind(); }

void LocalApi::Stop() { server_->stop(); }

}  // namespace pp::agent
