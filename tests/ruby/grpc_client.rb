# A Rails-like client of the kas control plane over gRPC, with Debian's
# ruby-grpc and the stubs in stubs/ (generated from our protos by
# `make generate`; see buf.gen.ruby.yaml).
#
# Environment:
#   KAS_TARGET               gRPC target: host:port or unix:/path/to/socket
#   KAS_API_SECRET_KEY_FILE  file with base64 of the 32-byte api_secret_key
#   KAS_PROJECT_ID           project to create the agent in
#   KAS_CONNECTED_AGENT_ID   an agent that has a tunnel (to list as connected)
#
# Creates an agent and a token, reads them back and lists connected agents,
# then prints what it saw as one JSON object.
$LOAD_PATH.unshift(File.join(__dir__, 'stubs'))

require 'base64'
require 'json'
require 'openssl'
require 'grpc'
require 'kas/management/v1/management_services_pb'

include Kas::Management::V1

# HS256 JWT for the management API: issuer gitlab, audience kas-management.
def kas_token(key)
  enc = ->(s) { Base64.urlsafe_encode64(s, padding: false) }
  now = Time.now.to_i
  header = enc.call(JSON.generate(alg: 'HS256', typ: 'JWT'))
  claims = enc.call(JSON.generate(iss: 'gitlab', aud: 'kas-management', sub: 'rails', iat: now, exp: now + 60))
  signature = enc.call(OpenSSL::HMAC.digest('SHA256', key, "#{header}.#{claims}"))
  "#{header}.#{claims}.#{signature}"
end

key = Base64.strict_decode64(File.read(ENV.fetch('KAS_API_SECRET_KEY_FILE')).strip)
auth = { metadata: { 'authorization' => "Bearer #{kas_token(key)}" } }
stub = AgentService::Stub.new(ENV.fetch('KAS_TARGET'), :this_channel_is_insecure)
project_id = Integer(ENV.fetch('KAS_PROJECT_ID'))
connected_id = Integer(ENV.fetch('KAS_CONNECTED_AGENT_ID'))

agent = stub.create_agent(CreateAgentRequest.new(project_id: project_id, name: 'rails-grpc'), **auth).agent
token = stub.create_agent_token(CreateAgentTokenRequest.new(agent_id: agent.id, name: 'default'), **auth)
fetched = stub.get_agent(GetAgentRequest.new(agent_id: agent.id), **auth).agent
connected = stub.list_connected_agents(ListConnectedAgentsRequest.new(agent_ids: [agent.id, connected_id]), **auth)

def status_of
  yield
  nil
rescue GRPC::BadStatus => e
  { code: e.code, message: e.details }
end

invalid = status_of { stub.create_agent(CreateAgentRequest.new(project_id: project_id, name: 'Not A DNS Label'), **auth) }
wrong_key = status_of do
  stub.get_agent(GetAgentRequest.new(agent_id: agent.id),
                 metadata: { 'authorization' => "Bearer #{kas_token(OpenSSL::Random.random_bytes(32))}" })
end

puts JSON.generate(
  agent: { id: agent.id, project_id: agent.project_id, name: agent.name },
  token: { id: token.token.id, agent_id: token.token.agent_id, secret: token.secret },
  fetched_name: fetched.name,
  connected: connected.agents.map do |a|
    { agent_id: a.agent_id, nodes: a.nodes.map { |n| { node_id: n.node_id, tunnels: n.tunnels } } }
  end,
  invalid: invalid,
  wrong_key: wrong_key
)
