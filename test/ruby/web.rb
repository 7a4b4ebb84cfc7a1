# Renders Sidekiq Web UI pages in-process through Rack::MockRequest, the
# way a browser would see them. Usage: ruby web.rb PATH... ; prints
# {"PATH": {"status": 200, "body": "..."}, ...}
require_relative "common"
require "rack"
require "rack/session/cookie"
require "sidekiq/web"

app = Rack::Builder.new do
  use Rack::Session::Cookie, secret: "x" * 64, same_site: true
  run Sidekiq::Web
end.to_app

out = {}
ARGV.each do |path|
  res = Rack::MockRequest.new(app).get(path)
  out[path] = { "status" => res.status, "location" => res.headers["Location"], "body" => res.body }
end
emit(out)
