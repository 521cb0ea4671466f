#!/usr/bin/env bash
# Installs what beanmail needs on a Debian machine, idempotently:
#   scripts/setup.sh run    beanstalkd, Node.js (for the maildev catcher), the venv
#   scripts/setup.sh test   the same plus the test servers (dnsmasq, postfix's smtp-sink, PostgreSQL, MariaDB, PHP)
#                           and Django's own mail tests (var/conformance/)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-run}

packages=(beanstalkd)
# Node.js may come from elsewhere than Debian (as on many dev machines): keep it if it works.
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
if [ "$what" = test ] || [ "$what" = bench ]; then
  packages+=(dnsmasq-base postfix postgresql mariadb-server php-cli php-pda-pheanstalk ruby ruby-beaneater openssl curl dovecot-imapd dovecot-lmtpd
            chromium chromium-driver  # the console's browser tests (selenium drives Debian's build)
            prometheus  # promtool tests docs/alerts
            opendkim-tools  # opendkim-testmsg: the second DKIM verifier in tests/test_dkim.py
            libsisimai-perl)  # the bounce conformance tier's reference verdicts (Sisimai 4.x, BSD-2)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  # postfix is only wanted for smtp-sink/smtp-source: no mail system is configured or started
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ setup.py -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[worker,test,postgresql,mysql]'
  touch .venv/.installed
fi

# Django's own mail tests, for the conformance tier (tests/conformance/test_django_mail.py): its
# sdist on PyPI carries its test suite (BSD-3-Clause); the version the venv has, tests/mail only
if [ "$what" = test ]; then
  django_version=$(.venv/bin/python -c "import django; print(django.__version__)")
  django_tests=var/conformance/django-$django_version
  if [ ! -f "$django_tests/tests/mail/tests.py" ]; then
    echo "setup: fetching Django $django_version's test suite (its sdist) into $django_tests"
    rm -rf var/conformance/sdist && mkdir -p var/conformance/sdist "$django_tests"
    .venv/bin/pip download -q --no-deps --no-binary :all: "django==$django_version" -d var/conformance/sdist
    tar -xzf var/conformance/sdist/*.tar.gz -C "$django_tests" --strip-components=1 --wildcards '*/tests/mail/*' "*-$django_version/LICENSE"
    rm -rf var/conformance/sdist
  fi
fi

# the bounce conformance tier's corpus: flufl.bounce's test messages (Apache-2.0), from its sdist on PyPI
if [ "$what" = test ] && [ ! -f var/corpora/flufl-bounce/.complete ]; then
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --no-binary :all: flufl.bounce==6.0.0 -d "$tmp" >/dev/null
  tar -xzf "$tmp"/flufl_bounce-6.0.0.tar.gz -C "$tmp"
  rm -rf var/corpora/flufl-bounce && mkdir -p var/corpora/flufl-bounce
  cp "$tmp"/flufl_bounce-6.0.0/tests/data/*.txt var/corpora/flufl-bounce/
  cp "$tmp"/flufl_bounce-6.0.0/tests/test_detectors.py var/corpora/flufl-bounce/.expected.py  # its own verdicts
  cp "$tmp"/flufl_bounce-6.0.0/LICENSE var/corpora/flufl-bounce/.LICENSE
  touch var/corpora/flufl-bounce/.complete
  rm -rf "$tmp"
fi

# the reply-text corpus: talon's standard replies (Apache-2.0), mail clients' replies to "Hello", from its sdist on PyPI
if [ "$what" = test ] && [ ! -f var/corpora/talon-replies/.complete ]; then
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --no-binary :all: talon==1.4.4 -d "$tmp" >/dev/null
  tar -xzf "$tmp"/talon-1.4.4.tar.gz -C "$tmp"
  rm -rf var/corpora/talon-replies && mkdir -p var/corpora/talon-replies
  cp "$tmp"/talon-1.4.4/tests/fixtures/standard_replies/*.eml var/corpora/talon-replies/
  cp "$tmp"/talon-1.4.4/LICENSE var/corpora/talon-replies/.LICENSE
  touch var/corpora/talon-replies/.complete
  rm -rf "$tmp"
fi

# the development catcher (MailCatcher's ports: SMTP 1025, web 1080), from the npm registry
if [ ! -x var/catcher/node_modules/.bin/maildev ]; then
  mkdir -p var/catcher
  npm install --silent --no-audit --no-fund --prefix var/catcher maildev@3 >/dev/null 2>&1
fi
echo "setup: ok ($what)"
