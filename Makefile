.PHONY: install test lint demo bench pretrained

install:
	python3 -m venv .venv && .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -e '.[dev,landmarks]'

test:
	.venv/bin/python -m pytest -q -n 2 --dist loadfile

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# Retrain the shipped FER2013 model and replace modelstore/pretrained/fer2013 (README: "Shipped FER2013 model").
FER ?= ../shared/datasets/fer2013
PRETRAINED_DATA ?= pretrained-data
pretrained:
	.venv/bin/emotion pipeline $(FER)/train -d $(PRETRAINED_DATA) --face-mode whole --preset cpu --budget-minutes 0
	.venv/bin/emotion model export-pretrained -d $(PRETRAINED_DATA) --public-test $(FER)/public_test \
		--duplicates $(FER)/train_duplicates_of_public_test.tsv \
		--reproduce "make pretrained  (emotion pipeline $(FER)/train -d $(PRETRAINED_DATA) --face-mode whole --preset cpu --budget-minutes 0; emotion model export-pretrained)"
