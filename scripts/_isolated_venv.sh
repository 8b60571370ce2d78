# Shared by make_ct_reader_env.sh and make_vllm_env.sh (sourced, not run): where an isolated environment
# lives, and building it once, under a lock, with a stamp file that records what was installed.
#
#   isolated_venv_dir NAME [DIR]   DIR, else <cache>/NAME: $SAU_COMPRESS_CACHE, $XDG_CACHE_HOME/sau-compress or
#                                  ~/.cache/sau-compress (as sau_compress.io.cache_dir)
#   isolated_venv_begin VENV STAMP WANT
#                                  prints VENV's python and returns 1 when STAMP holds WANT (built already, also
#                                  by another process while this one waited for the lock); else returns 0 with
#                                  the lock held and a fresh, empty venv at VENV (PYTHON: the base interpreter)
#   isolated_venv_end VENV STAMP WANT
#                                  writes the stamp and prints VENV's python (its last line of output)

isolated_venv_dir() {
  if [[ -n "${2:-}" ]]; then echo "$2"; return; fi
  local root
  if [[ -n "${SAU_COMPRESS_CACHE:-}" ]]; then root="$SAU_COMPRESS_CACHE"
  elif [[ -n "${XDG_CACHE_HOME:-}" ]]; then root="$XDG_CACHE_HOME/sau-compress"
  else root="$HOME/.cache/sau-compress"; fi
  echo "$root/$1"
}

_isolated_venv_ready() {
  [[ -f "$2" && "$(cat "$2")" == "$3" && -x "$1/bin/python" ]]
}

isolated_venv_begin() {
  local venv="$1" stamp="$2" want="$3"
  if _isolated_venv_ready "$venv" "$stamp" "$want"; then echo "$venv/bin/python"; return 1; fi
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  # another process may have finished it while we waited for the lock
  if _isolated_venv_ready "$venv" "$stamp" "$want"; then echo "$venv/bin/python"; return 1; fi
  rm -rf "$venv"
  # the base interpreter, even when called from inside another venv
  local base
  base="$("${PYTHON:-python3}" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
  "$base" -m venv "$venv" >&2
}

isolated_venv_end() {
  echo "$3" > "$2"
  echo "$1/bin/python"
}
