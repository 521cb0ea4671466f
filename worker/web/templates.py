"""The console's pages: jinja2 templates kept in the package as text (nothing to install beside
the code), autoescaped, undefined names an error."""

from __future__ import annotations

import jinja2

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#212529;background:#f8f9fa}
header{background:#212529;color:#f8f9fa;padding:.6rem 1.2rem;display:flex;flex-wrap:wrap;gap:.4rem 1.1rem;align-items:baseline}
header a{color:#dee2e6;text-decoration:none}header a.here{color:#fff;font-weight:600}
header .brand{font-weight:700;color:#fff}
main{padding:1rem 1.2rem;max-width:1100px}
h1{font-size:1.3rem;margin:.2rem 0 1rem}h2{font-size:1.05rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;background:#fff;margin-bottom:.6rem}
th,td{padding:.3rem .7rem;border-bottom:1px solid #e9ecef;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#c92a2a;font-weight:600}.warn{color:#e8590c}.ok{color:#2b8a3e}
.flash{background:#e7f5ff;border:1px solid #a5d8ff;padding:.5rem .8rem;margin-bottom:1rem}
.error{background:#fff5f5;border:1px solid #ffc9c9;padding:.5rem .8rem;margin-bottom:1rem}
form.inline{display:inline;margin:0}button{cursor:pointer}
button.danger{color:#c92a2a}
pre{background:#fff;border:1px solid #dee2e6;padding:.7rem;overflow:auto;max-width:100%}
.figures{display:flex;gap:2rem;flex-wrap:wrap}.figure{background:#fff;border:1px solid #e9ecef;padding:.5rem 1rem}
.figure b{display:block;font-size:1.3rem}
.legend span{display:inline-block;margin-right:1rem}.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
.sw-sent{background:#2b8a3e}.sw-skipped{background:#868e96}.sw-deferred{background:#e8590c}.sw-bounced{background:#c92a2a}
.sw-p50{background:#1971c2}.sw-p99{background:#e03131}.sw-poison{background:#862e9c}.sw-exhausted{background:#5c3d0e}.sw-in_doubt{background:#1971c2}
.muted{color:#868e96}
header .refresh{color:#adb5bd;font-size:.85rem}header .refresh b{color:#fff}
form.filter input{margin-right:.4rem}.confirm{background:#fff9db;border:1px solid #ffe066;padding:.5rem .8rem;margin:.6rem 0}
"""

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · beanmail</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{{ root }}/static/console.css">
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}; url={{ refresh_url }}">{% endif %}</head>
<body><header><span class="brand">beanmail</span>
{% for href, label in [("/", "Overview"), ("/deferred", "Deferred"), ("/buried", "Buried"), ("/log", "Log"), ("/mailout", "Mailouts"), ("/events", "Events"), ("/replies", "Replies"), ("/suppressions", "Suppressions"), ("/bounces", "Bounces"), ("/metrics", "Metrics")] %}
<a href="{{ root }}{{ href }}{% if refresh and href != '/metrics' %}?refresh={{ refresh }}{% endif %}"{% if href == here %} class="here"{% endif %}>{{ label }}</a>{% endfor %}
<span class="refresh" id="refresh">refresh {% for s, href in refresh_links %}{% if s == refresh %}<b>{{ (s ~ " s") if s else "off" }}</b>{% else %}<a id="refresh-{{ s }}" href="{{ href }}">{{ (s ~ " s") if s else "off" }}</a>{% endif %} {% endfor %}</span>
<span class="muted">{{ beanstalk_url }}</span></header>
<main>{% if flash %}<div class="flash" id="flash">{{ flash }}</div>{% endif %}
{% if error %}<div class="error" id="error">{{ error }}</div>{% endif %}
{% block main %}{% endblock %}</main></body></html>
"""

OVERVIEW = """{% extends "base.html" %}{% block main %}
<h1>Overview</h1>
{% if bs.error %}<p class="bad">beanstalkd {{ bs.url }}: {{ bs.error }}</p>{% endif %}
<h2>Tubes</h2>
<table id="tubes"><tr><th>tube</th><th class="n">ready</th><th class="n">reserved</th><th class="n">delayed</th>
<th class="n">buried</th><th class="n">oldest job</th><th class="n">watching</th><th class="n">paused</th><th></th></tr>
{% for t in bs.tubes %}<tr data-tube="{{ t.tube }}"><td>{{ t.tube }}</td><td class="n">{{ t.ready }}</td>
<td class="n">{{ t.reserved }}</td><td class="n">{{ t.delayed }}</td>
<td class="n">{% if t.buried %}<a class="bad" href="{{ root }}/buried?tube={{ t.tube }}">{{ t.buried }}</a>{% else %}0{% endif %}</td>
<td class="n">{{ age(t.oldest) if t.ready or t.delayed or t.buried else "–" }}</td><td class="n">{{ t.watching }}</td>
<td class="n">{{ t.paused ~ " s" if t.paused else "" }}</td><td>{% if t.paused %}
<form class="inline" method="post" action="{{ root }}/tube/resume"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="tube" value="{{ t.tube }}"><button id="resume-{{ t.tube }}">resume</button></form>{% else %}
<form class="inline" method="post" action="{{ root }}/tube/pause"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="tube" value="{{ t.tube }}">
<select name="seconds">{% for s, label in pause_choices %}<option value="{{ s }}">{{ label }}</option>{% endfor %}</select> <button id="pause-{{ t.tube }}">pause</button></form>{% endif %}</td></tr>
{% else %}<tr><td colspan="9" class="muted">no tube yet</td></tr>{% endfor %}</table>
<p>Workers connected to beanstalkd: <b id="workers">{{ bs.workers }}</b>{% if processes %} ·
supervisord: {% for p in processes %}<span class="{{ 'ok' if p.state == 'RUNNING' else 'bad' }}">{{ p.name }} {{ p.state }}</span>{{ ", " if not loop.last }}{% endfor %}{% elif supervisor_error %} · <span class="muted">supervisord {{ supervisor_error }}</span>{% endif %}</p>

{% if relays %}<h2>Relays</h2>
<table id="relays"><tr><th>relay</th><th>priorities</th><th>state</th><th class="n">bulk pace</th><th class="n">bulk sent</th><th class="n">queue</th><th>bulk</th></tr>
{% for r in relays %}<tr data-relay="{{ r.relay }}"><td>{{ r.relay }}</td><td>{{ r.priorities }}</td>
{% if not r.seen %}<td class="muted" colspan="5">no worker has reported on it yet</td>{% else %}
<td class="{{ 'ok' if r.seen.up else 'bad' }}">{% if r.seen.up %}up{% else %}skipped for {{ age(r.skipped_for) }}: {{ r.seen.reason }}{% endif %}</td>
<td class="n">{{ "{:,.0f}".format(r.seen.pace) }}/s</td><td class="n">{{ "{:,.1f}".format(r.seen.sent_rate) }}/s</td>
<td class="n">{% if r.seen.queue_error %}<span class="bad">{{ r.seen.queue_error }}</span>{% elif r.seen.queue >= 0 %}{{ r.seen.queue }}{% else %}–{% endif %}</td>
<td class="{{ 'warn' if r.seen.held else '' }}">{{ ("held: " ~ r.seen.held) if r.seen.held else "going" }}</td>{% endif %}</tr>{% endfor %}</table>
<p class="muted">What the workers last said of each relay (they report every few seconds); <code>beanmail status</code> also opens a session with each.</p>
{% endif %}
{% if registry %}<h2>Worker processes (registry)</h2>
<table id="registry"><tr><th>host</th><th class="n">pid</th><th>tubes</th><th>state</th><th class="n">last seen</th><th class="n">started</th><th class="n">jobs done</th><th>job in hand</th><th>version</th></tr>
{% for w in registry %}<tr data-worker="{{ w.host }}:{{ w.pid }}"><td>{{ w.host }}</td><td class="n">{{ w.pid }}</td><td>{{ w.tubes }}</td>
<td class="{{ 'ok' if w.state == 'running' else ('bad' if w.state in ('lost', 'silent') else 'warn') }}">{{ w.state }}</td>
<td class="n">{{ age(w.seen_ago) }} ago</td><td class="n">{{ when(w.started_at) }}</td><td class="n">{{ w.jobs_done }}</td><td>{% if w.current_job.isdigit() %}<a href="{{ root }}/job/{{ w.current_job }}">{{ w.current_job }}</a>{% else %}{{ w.current_job }}{% endif %}</td><td>{{ w.version }}</td></tr>{% endfor %}</table>
<p class="muted">Stopped and lost workers' rows go a day after they were last seen.</p>
{% endif %}
<h2>Hosts</h2>
<p>Disabling a host (or <code>host:pid</code>) makes its workers finish the job in hand and exit; enabling lets supervisord start them again.</p>
<table id="hosts"><tr><th>host or worker</th><th>state</th><th></th></tr>
{% for h in hosts %}<tr data-host="{{ h.target }}"><td>{{ h.target }}</td><td class="{{ 'warn' if h.disabled else 'ok' }}">{{ "disabled" if h.disabled else "enabled" }}</td><td>
<form class="inline" method="post" action="{{ root }}/host/{{ 'enable' if h.disabled else 'disable' }}"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="target" value="{{ h.target }}">
<button id="{{ 'enable' if h.disabled else 'disable' }}-{{ h.target }}"{% if not h.disabled %} class="danger"{% endif %}>{{ "enable" if h.disabled else "disable" }}</button></form></td></tr>
{% else %}<tr><td colspan="3" class="muted">no worker has registered</td></tr>{% endfor %}</table>
<h2>Delivery rates, messages per minute by outcome{% if since %}, since {{ since }}{% endif %}</h2>
<p class="muted">Window: {% for h in windows %}{% if h == hours %}<b>{{ h }} h</b>{% else %}<a href="{{ root }}/?hours={{ h }}">{{ h }} h</a>{% endif %}{{ " · " if not loop.last }}{% endfor %}
(minutes before the first message of the window are left out)</p>
{{ plot }}
<div class="legend">{% for name, total in legend %}<span><i class="sw-{{ name }}"></i>{{ name }} {{ total }}</span>{% endfor %}</div>

<h2>Enqueue to accepted (sent mail, last hour)</h2>
<div class="figures">
<div class="figure">p50<b id="p50">{{ seconds(lat.p50) }}</b></div>
<div class="figure">p99<b id="p99">{{ seconds(lat.p99) }}</b></div>
<div class="figure">messages<b>{{ lat.count }}</b></div>
<div class="figure">longest<b>{{ seconds(lat.max) }}</b></div>
<div class="figure">bulk brake<b id="brake" class="{{ 'bad' if brake.engaged else '' }}">{{ brake.state }}</b></div>
</div>
{% if brake.detail %}<p class="muted">Bulk brake: {{ brake.detail }}</p>{% endif %}
{{ latency_plot }}
<div class="legend"><span><i class="sw-p50"></i>p50</span><span><i class="sw-p99"></i>p99</span> <span class="muted">of each minute's sent mail</span></div>

<h2>Recipient domains, last {{ hours }} h</h2>
<p class="muted">Jobs the workers finished, by outcome: a message deferred twice and then sent counts 2 deferred and 1 sent.</p>
<table id="domains"><tr><th>domain</th><th class="n">sent</th><th class="n">deferred</th><th class="n">bounced</th><th class="n">other</th><th class="n">rate limit</th></tr>
{% for d in domains %}<tr data-domain="{{ d.domain }}"><td>{{ d.domain }}</td><td class="n">{{ d.sent }}</td><td class="n">{{ d.deferred }}</td>
<td class="n">{{ d.bounced }}</td><td class="n">{{ d.other }}</td><td class="n">{{ (d.rate ~ "/s") if d.rate else "none" }}</td></tr>
{% else %}<tr><td colspan="6" class="muted">nothing delivered in this time</td></tr>{% endfor %}</table>
{% endblock %}
"""

BURIED = """{% extends "base.html" %}{% block main %}
<h1>Buried jobs{% if tube %} in {{ tube }}{% endif %}</h1>
<p>Kicking moves a job back to ready for the workers to try again; a poison job is buried again
until its cause (template, producer) is fixed. Deleting removes it for good; the store keeps why it was buried.</p>
{% if counts %}<table id="buried-tubes"><tr><th>tube</th><th class="n">buried</th><th></th></tr>
{% for t, n in counts %}<tr><td><a href="{{ root }}/buried?tube={{ t }}">{{ t }}</a></td><td class="n">{{ n }}</td><td>
<form class="inline" method="post" action="{{ root }}/buried/kick"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="tube" value="{{ t }}"><input type="hidden" name="all" value="1"><button id="kick-all-{{ t }}">kick all {{ n }}</button></form>
<form class="inline" method="post" action="{{ root }}/buried/delete"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="tube" value="{{ t }}"><input type="hidden" name="all" value="1"><button class="danger" id="delete-all-{{ t }}">delete all {{ n }}</button></form>
</td></tr>{% endfor %}</table>
<form method="post" action="{{ root }}/buried/kick"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="all" value="1"><button id="kick-all">kick every buried job of every tube</button></form>
{% endif %}
<h2>Jobs</h2>
<form class="filter" method="get" action="{{ root }}/buried">{% if tube %}<input type="hidden" name="tube" value="{{ tube }}">{% endif %}
<input name="template" value="{{ filt.template }}" placeholder="template" size="18" maxlength="200">
<input name="domain" value="{{ filt.domain }}" placeholder="recipient domain" size="18" maxlength="200">
<input name="reason" value="{{ filt.reason }}" placeholder="part of the reason" size="24" maxlength="200"><button id="filter">filter</button></form>
{% if not filt.empty %}<div class="confirm" id="matching"><b>{{ jobs|length }}</b> buried job(s) match {{ filt.describe() }}{% if jobs %}:
{% for action, label in [("kick", "kick"), ("delete", "delete")] %}<form class="inline" method="post" action="{{ root }}/buried/{{ action }}"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="filter" value="1">{% for name in ("template", "domain", "reason", "tube") %}<input type="hidden" name="{{ name }}" value="{{ filt[name] }}">{% endfor %}
<input type="hidden" name="expected" value="{{ jobs|length }}"><button id="{{ action }}-matching"{% if action == "delete" %} class="danger"{% endif %}>{{ label }} these {{ jobs|length }}</button></form> {% endfor %}{% endif %}</div>{% endif %}
<table id="buried"><tr><th>job</th><th>tube</th><th>outcome</th><th>reason</th><th>template / subject</th><th>recipient</th><th class="n">age</th><th></th></tr>
{% for j in jobs %}<tr data-job="{{ j.id }}"><td><a href="{{ root }}/job/{{ j.id }}">{{ j.id }}</a></td><td>{{ j.tube }}</td>
<td>{{ j.outcome or "?" }}</td><td>{{ j.reason or "(no reason recorded)" }}</td><td>{{ j.template }}{% if j.subject %}<br><span class="muted">{{ j.subject }}</span>{% endif %}</td><td>{{ j.recipient }}</td>
<td class="n">{{ age(j.age) }}</td><td>
<form class="inline" method="post" action="{{ root }}/buried/kick"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="job" value="{{ j.id }}"><button id="kick-{{ j.id }}">kick</button></form>
<form class="inline" method="post" action="{{ root }}/buried/delete"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="job" value="{{ j.id }}"><button class="danger" id="delete-{{ j.id }}">delete</button></form></td></tr>
{% else %}<tr><td colspan="8" class="muted" id="none-buried">no buried jobs</td></tr>{% endfor %}</table>
{% endblock %}
"""

JOB = """{% extends "base.html" %}{% block main %}
<h1>Job {{ job_id }}</h1>
{% if view %}<table id="job"><tr><th>tube</th><td>{{ view.tube }}</td></tr><tr><th>state</th><td id="state">{{ view.state }}</td></tr>
<tr><th>age</th><td>{{ age(view.age) }}</td></tr><tr><th>priority</th><td>{{ view.pri }}</td></tr>
<tr><th>reserves / releases / buries / kicks</th><td>{{ view.reserves }} / {{ view.releases }} / {{ view.buries }} / {{ view.kicks }}</td></tr>
{% if view.reason %}<tr><th>reason</th><td>{{ view.outcome }}: {{ view.reason }}</td></tr>{% endif %}</table>
{% else %}<p id="state">Not in beanstalkd: it finished (sent, skipped and bounced jobs leave it) or was deleted.</p>{% endif %}
{% if history %}<h2>Buried before</h2><table><tr><th>when</th><th>tube</th><th>outcome</th><th>reason</th></tr>
{% for h in history %}<tr><td>{{ when(h.at) }}</td><td>{{ h.tube }}</td><td>{{ h.outcome }}</td><td>{{ h.reason }}</td></tr>{% endfor %}</table>{% endif %}
{% if deliveries %}<h2>Delivery log for its key</h2>{% include "deliveries.html" %}{% endif %}
{% if body is not none %}<h2>Body</h2><pre id="body">{{ body }}</pre>{% endif %}
{% endblock %}
"""

DELIVERIES = """<table class="deliveries"><tr><th>last change</th><th>outcome</th><th>key</th><th>recipient</th><th>template</th><th>subject</th><th class="n">attempts</th><th>reason / reply</th></tr>
{% for d in deliveries %}<tr><td>{{ when(d.updated_at) }}</td><td>{{ d.outcome }}</td><td>{{ d.key }}</td><td>{{ d.recipient }}</td><td>{{ d.template }}</td><td class="subject">{{ d.subject }}</td>
<td class="n">{{ d.attempts }}</td><td>{{ d.detail }}</td></tr>
{% for f in d.buried %}<tr class="muted"><td>{{ when(f.at) }}</td><td>buried ({{ f.outcome }})</td><td colspan="5"><a href="{{ root }}/job/{{ f.job }}">job {{ f.job }}</a> in {{ f.tube }}</td><td>{{ f.reason }}</td></tr>{% endfor %}
{% endfor %}</table>
"""

LOG = """{% extends "base.html" %}{% block main %}
<h1>Delivery log</h1>
<form method="get" action="{{ root }}/log"><input name="q" value="{{ q }}" size="50" placeholder="a key or the start of one, or a recipient: Zoë &lt;zoe@example.com&gt;" maxlength="500">
<button>search</button></form>
{% if q %}<p>{{ searched }}</p>{% if deliveries %}{% include "deliveries.html" %}{% else %}<p id="nothing">nothing recorded</p>{% endif %}
{% else %}<h2>Latest</h2>{% include "deliveries.html" %}{% endif %}
{% endblock %}
"""

SUPPRESSIONS = """{% extends "base.html" %}{% block main %}
<h1>Suppression list</h1>
<p>{% for source, n in counts %}{{ source }}: <b>{{ n }}</b>{{ " · " if not loop.last }}{% else %}the list is empty{% endfor %}</p>
<form method="get" action="{{ root }}/suppressions"><input name="q" value="{{ q }}" placeholder="part of an address"><button>search</button></form>
<h2>Add</h2>
<form method="post" action="{{ root }}/suppressions/add"><input type="hidden" name="csrf" value="{{ csrf }}">
<input name="address" size="36" placeholder="address" required> <input name="reason" size="30" value="added by operator"> <button id="suppress-add">add</button></form>
<h2>{% if q %}Matching “{{ q }}”{% else %}Newest{% endif %}</h2>
<table id="suppressions"><tr><th>address</th><th>source</th><th>reason</th><th>since</th><th>until</th><th></th></tr>
{% for r in rows %}<tr><td>{{ r.address }}</td><td>{{ r.source }}</td><td>{{ r.reason }}</td><td>{{ when(r.at) }}</td><td>{{ when(r.until) if r.until else "permanent" }}</td><td>
<form class="inline" method="post" action="{{ root }}/suppressions/remove"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="ref" value="{{ r.ref }}"><input type="hidden" name="hint" value="{{ r.hint }}"><button class="danger">remove</button></form></td></tr>
{% else %}<tr><td colspan="6" class="muted">none</td></tr>{% endfor %}</table>
{% endblock %}
"""

BOUNCES = """{% extends "base.html" %}{% block main %}
<h1>Bounces and complaints</h1>
<p>What came back after delivery: DSNs, ARF complaints and provider webhooks (`beanmail bounce`, `beanmail bounces fetch`).</p>
<form method="get" action="{{ root }}/bounces"><input name="q" value="{{ q }}" size="40" placeholder="an address"><button>search</button></form>
<table id="bounces"><tr><th>received</th><th>classification</th><th>kind</th><th>source</th><th>address</th><th>status</th><th>key</th><th>detail</th></tr>
{% for b in rows %}<tr><td>{{ when(b.received_at) }}</td><td>{{ b.classification }}</td><td>{{ b.kind }}</td><td>{{ b.source }}</td>
<td>{{ b.address }}</td><td>{{ b.status }}</td><td>{{ b.key }}</td><td>{{ b.detail }}</td></tr>
{% else %}<tr><td colspan="8" class="muted">none recorded</td></tr>{% endfor %}</table>
{% endblock %}
"""

DEFERRED = """{% extends "base.html" %}{% block main %}
<h1>Deferred mail</h1>
<p>Jobs waiting out a delay in beanstalkd: a temporary failure's backoff, greylisting, a rate-limit slot, or a delay the producer asked for.
{{ shown|length }} shown of <b id="deferred-count">{{ scan.wanted }}</b> delayed.</p>
{% include "scan.html" %}
<table id="deferred"><tr><th>job</th><th>tube</th><th>next attempt</th><th class="n">in</th><th class="n">tries</th><th>template / subject</th><th>recipient</th><th>key</th><th>last reason</th></tr>
{% for j in shown %}<tr data-job="{{ j.id }}"><td><a href="{{ root }}/job/{{ j.id }}">{{ j.id }}</a></td><td>{{ j.tube }}</td><td>{{ when(j.next_at) }}</td>
<td class="n">{{ age(j.time_left) }}</td><td class="n">{{ j.attempts }}</td><td>{{ j.template }}{% if j.subject %}<br><span class="muted">{{ j.subject }}</span>{% endif %}</td><td>{{ j.recipient }}</td><td>{{ j.key }}</td><td>{{ j.reason }}</td></tr>
{% else %}<tr><td colspan="9" class="muted" id="none-deferred">nothing deferred</td></tr>{% endfor %}</table>
{% endblock %}
"""

SCAN = """{% if not scan.complete %}<p class="warn" id="partial">beanstalkd lists no jobs; the console looked at job ids {{ scan.lowest }} to {{ scan.top - 1 }}, and at each tube's next job, and found {{ scan.jobs|length }} of {{ scan.wanted }}: older ones are not shown.</p>{% endif %}"""

EVENTS = """{% extends "base.html" %}{% block main %}
<h1>Delivery events</h1>
<p>Events wait in the tube <code>{{ tube }}</code> for <code>beanmail events run</code> to POST them to {{ url or "(BEANMAIL_EVENTS_URL is not set: events are off)" }}.</p>
<p>{% for s, label in views %}{% if s == view %}<b>{{ label }}</b>{% else %}<a href="{{ root }}/events?view={{ s }}">{{ label }}</a>{% endif %} ({{ counts[s] }}){{ " · " if not loop.last }}{% endfor %}</p>
{% if view == "failed" %}
<p>Buried: refused by the endpoint (a 4xx), or not taken for BEANMAIL_EVENTS_MAX_AGE. Kick them from <a href="{{ root }}/buried?tube={{ tube }}">Buried</a> once the endpoint is fixed.</p>
<table id="events"><tr><th>job</th><th>type</th><th>event id</th><th>key</th><th>recipient</th><th>happened</th><th>outcome</th><th>reason</th></tr>
{% for e in rows %}<tr data-job="{{ e.id }}"><td><a href="{{ root }}/job/{{ e.id }}">{{ e.id }}</a></td><td>{{ e.type }}</td><td>{{ e.event }}</td><td>{{ e.key }}</td><td>{{ e.recipient }}</td><td>{{ when(e.at) }}</td><td>{{ e.outcome }}</td><td>{{ e.reason or "(no reason recorded)" }}</td></tr>
{% else %}<tr><td colspan="8" class="muted" id="none-events">none</td></tr>{% endfor %}</table>
{% else %}{% include "scan.html" %}
<table id="events"><tr><th>job</th><th>type</th><th>event id</th><th>key</th><th>recipient</th><th>happened</th>{% if view == "retried" %}<th class="n">tries</th><th>next try</th>{% endif %}</tr>
{% for e in rows %}<tr data-job="{{ e.id }}"><td><a href="{{ root }}/job/{{ e.id }}">{{ e.id }}</a></td><td>{{ e.type }}</td><td>{{ e.event }}</td><td>{{ e.key }}</td><td>{{ e.recipient }}</td><td>{{ when(e.at) }}</td>
{% if view == "retried" %}<td class="n">{{ e.releases }}</td><td>{{ when(e.next_at) }} (in {{ age(e.time_left) }})</td>{% endif %}</tr>
{% else %}<tr><td colspan="8" class="muted" id="none-events">none</td></tr>{% endfor %}</table>{% endif %}
{% endblock %}
"""

REPLIES = """{% extends "base.html" %}{% block main %}
<h1>Replies</h1>
<p>Mail that came back to a reply address (<code>beanmail inbound</code>, <code>beanmail inbound fetch</code>, provider webhooks): passed on as <code>message.replied</code>, or refused and why.</p>
<p>{% for o in ("", "replied", "refused") %}{% if o == outcome %}<b>{{ o or "all" }}</b>{% else %}<a href="{{ root }}/replies{{ ('?outcome=' ~ o) if o else '' }}">{{ o or "all" }}</a>{% endif %}{{ " · " if not loop.last }}{% endfor %}</p>
<table id="replies"><tr><th>received</th><th>outcome</th><th>from</th><th>key</th><th>reason</th></tr>
{% for r in rows %}<tr class="{{ 'bad' if r.outcome == 'refused' else '' }}"><td>{{ when(r.received_at) }}</td><td>{{ r.outcome }}</td><td>{{ r.address }}</td><td>{{ r.key }}</td><td>{{ r.reason }}</td></tr>
{% else %}<tr><td colspan="5" class="muted" id="none-replies">none recorded</td></tr>{% endfor %}</table>
{% endblock %}
"""

MAILOUT = """{% extends "base.html" %}{% block main %}
<h1>Mailout progress</h1>
<form method="get" action="{{ root }}/mailout"><input name="key" value="{{ key }}" size="40" maxlength="500" placeholder="the mailout's key"> <button id="mailout-search">show</button></form>
{% if error %}{% elif p and p.found %}
<div class="figures" id="progress">
<div class="figure">sent<b id="sent">{{ p.sent }}</b></div><div class="figure">bounced<b id="bounced">{{ p.bounced }}</b></div>
<div class="figure">left<b id="left">{{ p.left }}</b></div><div class="figure">buried<b id="buried">{{ p.buried }}</b></div>
<div class="figure">skipped or failed<b id="other">{{ p.other }}</b></div><div class="figure">of<b id="total">{{ p.total }}</b></div></div>
{% if p.total %}<svg id="progress-bar" width="600" height="18" role="img" aria-label="{{ p.sent + p.bounced + p.other + p.buried }} of {{ p.total }} done"><rect width="600" height="18" fill="#e9ecef"/>{% set ns = namespace(x=0) %}{% for n, colour in [(p.sent, "#2b8a3e"), (p.bounced, "#c92a2a"), (p.other, "#868e96"), (p.buried, "#862e9c")] %}{% if n %}<rect x="{{ ns.x|round(2) }}" width="{{ (600 * n / p.total)|round(2) }}" height="18" fill="{{ colour }}"/>{% set ns.x = ns.x + 600 * n / p.total %}{% endif %}{% endfor %}</svg>{% endif %}
<p class="muted">Left: {{ p.waiting }} recipient job(s) in beanstalkd{% if p.chunks %} and {{ p.unexpanded }} recipient(s) in {{ p.chunks }} chunk(s) not yet fanned out{% endif %}.
The delivery log: {% for o, n in p.logged|dictsort %}{{ o }} {{ n }}{{ ", " if not loop.last }}{% else %}nothing yet{% endfor %}.
{% if not p.complete %}<span class="warn" id="partial">beanstalkd holds more jobs than the console looked at: "left" may be more.</span>{% endif %}</p>
<p><a href="{{ root }}/log?q={{ key|urlencode }}%3A">its deliveries in the log</a></p>
{% elif key %}<p id="nothing">nothing known of a mailout with key {{ shown_key }}: no delivery with a key starting “{{ shown_key }}:”, no job of it in beanstalkd</p>{% endif %}
<h2>Scheduled</h2>
{% if scheduled %}<table id="scheduled"><tr><th>key</th><th>template</th><th class="n">recipients</th><th>due</th><th>state</th><th></th></tr>
{% for m in scheduled %}<tr data-key="{{ m.key }}"><td><a href="{{ root }}/mailout?key={{ m.key|urlencode }}">{{ m.key }}</a></td><td>{{ m.template }}</td><td class="n">{{ m.recipients }}</td>
<td>{{ when(m.send_at) }}{% if m.last_at > m.send_at %} to {{ when(m.last_at) }}{% endif %}{% if m.local %} ({{ m.local }} local){% endif %}</td><td>{{ m.state }}</td>
<td><form class="inline" method="post" action="{{ root }}/mailout/cancel"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="key" value="{{ m.key }}"><button>cancel</button></form></td></tr>{% endfor %}</table>
{% else %}<p class="muted" id="none-scheduled">no mailout is scheduled (<code>mailout(..., send_at=…)</code>, docs/webapps.md)</p>{% endif %}
{% endblock %}
"""

ENV = jinja2.Environment(
    loader=jinja2.DictLoader({"base.html": BASE, "overview.html": OVERVIEW, "buried.html": BURIED, "job.html": JOB,
                              "deliveries.html": DELIVERIES, "log.html": LOG, "suppressions.html": SUPPRESSIONS, "bounces.html": BOUNCES,
                              "deferred.html": DEFERRED, "scan.html": SCAN, "events.html": EVENTS, "replies.html": REPLIES,
                              "mailout.html": MAILOUT}),
    autoescape=True, undefined=jinja2.StrictUndefined,
)
