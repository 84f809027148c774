#!/bin/sh
cd "$(dirname "$0")" && [ -d node_modules/baileys ] || npm ci --no-audit --no-fund
