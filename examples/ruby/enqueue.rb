# Enqueue a beanmail job from Ruby with beaneater, using only docs/envelope.md.
#   ruby examples/ruby/enqueue.rb HOST PORT TEMPLATE ADDRESS NAME CONTEXT_JSON [SECRET]
# Prints the beanstalkd job id. With SECRET (BEANMAIL_SECRET; "new,old" signs with "new") the
# job is signed.

require "beaneater"  # Debian's ruby-beaneater
require "json"
require "openssl"
require "securerandom"

# A job body (docs/envelope.md, "Signing"): the envelope's JSON text as JSON.generate writes it;
# signed, that exact text goes into the body unchanged with the HMAC of its bytes after it.
def beanmail_body(job, secret = "")
  text = JSON.generate(job)
  return text if secret.to_s.empty?
  key = secret.split(",").first.strip  # the first key of the list signs
  %({"v":2,"signed":#{text},"sig":"#{OpenSSL::HMAC.hexdigest("SHA256", key, text)}"})
end

# arguments arrive binary under LANG=C (as supervisord starts programs): they are UTF-8
host, port, template, address, name, context_json, secret = ARGV.map { |a| a.dup.force_encoding(Encoding::UTF_8) }

job = {
  v: 2,
  kind: "mail",
  id: "ruby:#{SecureRandom.hex(8)}",
  template: template,
  to: {address: address, name: name},
  context: JSON.parse(context_json),
  priority: "urgent",
  created_at: Time.now.to_i,
}

beanstalk = Beaneater.new("#{host}:#{port}")
put = beanstalk.tubes["mail.urgent"].put(beanmail_body(job, secret), pri: 100, ttr: 120)
puts put[:id]
beanstalk.close
