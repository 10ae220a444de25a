# andon: the two commands of the README's quick start, and what they need.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# torch and torchvision are pinned to the releases this project is tested with
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test tutorial-screenshots install install-serve system-deps lint format audit bench-accuracy bench-inference bench-serve bench-pipeline bench-line bench-image deploy-lint

## The main job: sample data -> trained default model -> service on :8000 with a simulated camera.
demo: install
	$(PYTHON) -m andon demo

## Everything CI runs: install, system packages for the database and browser tests, the whole suite.
test: install system-deps
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest -q

## docs/tutorial.md run word for word (tests/test_tutorial.py), its screenshots written to docs/tutorial/
tutorial-screenshots:
	ANDON_TUTORIAL_SCREENSHOTS=docs/tutorial $(PYTHON) -m pytest -q tests/test_tutorial.py

install:
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[serve,train,dev]'

install-serve:
	$(PIP) install -q -e '.[serve]'

## PostgreSQL server binaries (tests start a throwaway cluster), Chromium (review-page browser tests), mosquitto
## (the line tests' MQTT broker) and nginx (tests/test_replicas_nginx.py: two replicas behind deploy/nginx.conf).
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium chromium-driver"; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
		|| echo "warning: could not install$$missing; tests that need them will skip"; \
	fi

## ruff (lint + format check) and the import-linter contracts; 'make format' rewrites the files
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	lint-imports

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

## The service image's size without Docker: its venv built and slimmed as deploy/Dockerfile.serve does, measured, run
bench-image:
	$(PYTHON) -m bench.image_size

## The deployment files (deploy/) through their own linters: hadolint, yamllint, kubernetes-validate (its Kubernetes
## schemas ship with it: offline), then tests/test_deploy_files.py (nginx -t, docker compose config where docker
## compose is installed, and what ties the files to the code: settings, probes, ports)
deploy-lint:
	hadolint deploy/Dockerfile.serve deploy/Dockerfile.train
	yamllint -s -c deploy/.yamllint.yaml deploy/
	kubernetes-validate --strict --quiet deploy/k8s/*.yaml
	$(PYTHON) -m pytest -q tests/test_deploy_files.py

## Known vulnerabilities in the installed packages (needs pypi.org's JSON API or api.osv.dev: not on offline boxes)
audit:
	$(PIP) install -q pip-audit
	$(PYTHON) -m pip_audit --progress-spinner off --skip-editable

bench-accuracy:
	$(PYTHON) -m bench.accuracy
bench-inference:
	$(PYTHON) -m bench.inference
bench-serve:
	$(PYTHON) -m bench.serve
bench-pipeline:
	$(PYTHON) -m bench.pipeline
bench-line:
	$(PYTHON) -m bench.line
