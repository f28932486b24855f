# A Rails-like client of the kas control plane with nothing but the Ruby
# standard library: Connect's JSON protocol over Net::HTTP, and the JWT
# built with OpenSSL::HMAC. No gem needed.
#
# Environment:
#   KAS_URL                  control plane base URL, e.g. http://127.0.0.1:8153
#   KAS_API_SECRET_KEY_FILE  file with base64 of the 32-byte api_secret_key
#   KAS_PROJECT_ID           project to create the agent in
#   KAS_CONNECTED_AGENT_ID   an agent that has a tunnel (to list as connected)
#
# Creates an agent and a token, reads them back and lists connected agents,
# then prints what it saw as one JSON object.
require 'base64'
require 'json'
require 'net/http'
require 'openssl'

# A Connect error: code is the Connect code name, e.g. "invalid_argument".
class KasError < StandardError
  attr_reader :code

  def initialize(code, message)
    super(message)
    @code = code
  end
end

# Calls the control plane's management API.
class Kas
  def initialize(url, key)
    @uri = URI(url)
    @key = key
  end

  # call('AgentService', 'CreateAgent', { projectId: 1, name: 'x' }) => Hash
  def call(service, method, request, key: @key)
    http = Net::HTTP.new(@uri.host, @uri.port)
    http.use_ssl = @uri.scheme == 'https'
    post = Net::HTTP::Post.new("/kas.management.v1.#{service}/#{method}",
                               'Content-Type' => 'application/json',
                               'Connect-Protocol-Version' => '1',
                               'Authorization' => "Bearer #{token(key)}")
    post.body = JSON.generate(request)
    response = http.request(post)
    body = JSON.parse(response.body)
    raise KasError.new(body['code'], body['message']) unless response.is_a?(Net::HTTPSuccess)

    body
  end

  private

  # HS256 JWT: issuer gitlab, audience kas-management, valid one minute.
  def token(key)
    enc = ->(s) { Base64.urlsafe_encode64(s, padding: false) }
    now = Time.now.to_i
    header = enc.call(JSON.generate(alg: 'HS256', typ: 'JWT'))
    claims = enc.call(JSON.generate(iss: 'gitlab', aud: 'kas-management', sub: 'rails', iat: now, exp: now + 60))
    signature = enc.call(OpenSSL::HMAC.digest('SHA256', key, "#{header}.#{claims}"))
    "#{header}.#{claims}.#{signature}"
  end
end

key = Base64.strict_decode64(File.read(ENV.fetch('KAS_API_SECRET_KEY_FILE')).strip)
kas = Kas.new(ENV.fetch('KAS_URL'), key)
project_id = Integer(ENV.fetch('KAS_PROJECT_ID'))
connected_id = Integer(ENV.fetch('KAS_CONNECTED_AGENT_ID'))

# int64 fields arrive as JSON strings (protobuf's JSON mapping).
agent = kas.call('AgentService', 'CreateAgent', { projectId: project_id, name: 'rails-connect' })['agent']
token = kas.call('AgentService', 'CreateAgentToken', { agentId: agent['id'], name: 'default' })
fetched = kas.call('AgentService', 'GetAgent', { agentId: agent['id'] })['agent']
connected = kas.call('AgentService', 'ListConnectedAgents', { agentIds: [agent['id'], connected_id] })

def status_of
  yield
  nil
rescue KasError => e
  { code: e.code, message: e.message }
end

invalid = status_of { kas.call('AgentService', 'CreateAgent', { projectId: project_id, name: 'Not A DNS Label' }) }
wrong_key = status_of { kas.call('AgentService', 'GetAgent', { agentId: agent['id'] }, key: OpenSSL::Random.random_bytes(32)) }

puts JSON.generate(
  agent: { id: Integer(agent['id']), project_id: Integer(agent['projectId']), name: agent['name'] },
  token: { id: Integer(token['token']['id']), agent_id: Integer(token['token']['agentId']), secret: token['secret'] },
  fetched_name: fetched['name'],
  connected: (connected['agents'] || []).map do |a|
    { agent_id: Integer(a['agentId']), nodes: a['nodes'].map { |n| { node_id: n['nodeId'], tunnels: n['tunnels'] } } }
  end,
  invalid: invalid,
  wrong_key: wrong_key
)
