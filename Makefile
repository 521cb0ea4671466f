# beanmail: `make run` for the dev stack with a demo mail, `make test` for the suite.
PY := .venv/bin/python
export BEANMAIL_WORKERS ?= 2

.PHONY: setup setup-test run example stop status test test-unit bench bench-smoke preview clean

setup:
	scripts/setup.sh run

setup-test:
	scripts/setup.sh test

## run: start beanstalkd, the catcher and supervisord, then send a demo mail through them
run: setup
	scripts/devstack.sh start
	$(PY) scripts/demo.py

## example: the example issue tracker on http://127.0.0.1:8000/ against the dev stack
example: setup
	scripts/devstack.sh start
	.venv/bin/python examples/tracker/app.py

stop:
	scripts/devstack.sh stop

status:
	.venv/bin/beanmail status

test: setup-test
	.venv/bin/pytest -q -n 2 --dist worksteal --durations=15 tests

## test-unit: the fast tier, every test that needs no server fixture (seconds; the venv must exist)
test-unit:
	.venv/bin/pytest -q -m unit tests

## bench: every scenario at full size against beanstalkd and smtp-sink (minutes); one JSON line each
bench: setup-test
	.venv/bin/python bench/run.py

## bench-smoke: the same scenarios at 2% size (seconds); figures printed, nothing asserted
bench-smoke: setup-test
	.venv/bin/python bench/run.py --scale 0.02

## preview: print a template as it would be sent (TEMPLATE=welcome; CONTEXT='{"name": "Zoë"}', else its preview.json)
TEMPLATE ?= welcome
CONTEXT ?=
preview: setup
	.venv/bin/beanmail render $(TEMPLATE) $(if $(CONTEXT),--context '$(CONTEXT)')

clean: stop
	rm -rf var
