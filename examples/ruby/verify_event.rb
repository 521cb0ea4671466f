# Verify a beanmail delivery event (Standard Webhooks: webhook-id, webhook-timestamp,
# webhook-signature = "v1,base64(HMAC-SHA256(key, id.timestamp.body))") with Ruby's standard library.
#
# In a Rack/Rails application:
#   event = beanmail_verify_event(request.raw_post, request.headers.to_h.transform_keys { |k| k.sub(/\AHTTP_/, "").tr("_", "-") },
#                                 ENV.fetch("BEANMAIL_EVENTS_SECRET"))
# Answer 2xx once handled; anything else and beanmail delivers it again later (keep the webhook-id
# of each event handled and ignore one seen before).
require "base64"
require "json"
require "openssl"

def beanmail_verify_event(body, headers, secret, tolerance: 300)
  h = headers.transform_keys { |k| k.to_s.downcase }
  id, timestamp, signatures = h["webhook-id"], h["webhook-timestamp"].to_s, h["webhook-signature"]
  raise ArgumentError, "missing webhook-id, webhook-timestamp or webhook-signature" unless id && timestamp.match?(/\A\d+\z/) && signatures
  raise ArgumentError, "webhook-timestamp too far from now" if (Time.now.to_i - timestamp.to_i).abs > tolerance
  key = Base64.strict_decode64(secret.delete_prefix("whsec_"))
  expected = Base64.strict_encode64(OpenSSL::HMAC.digest("SHA256", key, "#{id}.#{timestamp}.#{body}"))
  matched = signatures.split(" ").any? do |signature|
    version, value = signature.split(",", 2)
    version == "v1" && value && OpenSSL.secure_compare(expected, value)
  end
  raise ArgumentError, "no signature matches" unless matched
  JSON.parse(body)
end

# From the command line (the tests): the body on stdin, the headers as a JSON object and the secret as arguments.
if $PROGRAM_NAME == __FILE__
  begin
    event = beanmail_verify_event($stdin.binmode.read, JSON.parse(ARGV[0]), ARGV[1])
    puts "#{event["type"]} #{event["data"]["recipient"]}"
  rescue StandardError => e
    warn "refused: #{e.message}"
    exit 1
  end
end
