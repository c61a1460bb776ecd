#!/usr/bin/env bash
# Packs PagSharp (the library) and PagSharp.Cli (the `pag` dotnet tool) into a local folder feed and uses them as a user
# would: installs the tool into a temporary tool path and runs `pag sample`, `pag layers`, `pag eval` and `pag serve` (its
# page and one job over HTTP) from it, then
# builds and runs samples/QuickStart against the library package. Called by .ci/run after the tests; runs alone too:
#   bash .ci/package-check.sh            (PAGSHARP_KEEP_WORK=1 keeps the temporary folder and prints it)
# Takes about two minutes on a 2-core machine whose NuGet cache already holds TorchSharp-cpu (the tests' restore).
set -euo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
unset PAGSHARP_MODEL_DIR # the installed tool and the sample must find the models they ship, not a folder named here
repo=$PWD

missing=()
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then apt-get update -q && apt-get install -y -q "${missing[@]}"; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pagsharp-package-check.XXXXXX")
if [[ "${PAGSHARP_KEEP_WORK:-}" == 1 ]]; then trap 'echo "package-check: work folder kept: $work"' EXIT
else trap 'rm -rf "$work"' EXIT; fi
feed=$work/feed
step() { printf '\n== package-check: %s\n' "$*"; }
fail() { echo "package-check: FAILED: $*" >&2; exit 1; }

version=$(dotnet msbuild src/PagSharp/PagSharp.csproj -getProperty:Version)
[[ -n "$version" ]] || fail "no <Version> (Directory.Build.props)"
rid=$(dotnet --info | awk '$1 == "RID:" && !r { r = $2 } END { print r }')

# GLIBCXX_3.4.32's Vernaux entry in libLibTorchSharp.so is marked WEAK (the patch of build/PatchLibTorchSharp.cs).
is_weak() { readelf -V "$1" | grep 'Name: GLIBCXX_3.4.32  Flags: WEAK' >/dev/null; }
# Whether this machine's libstdc++ lacks that version (then a consumer's build output must have been patched).
host_lacks_glibcxx_3_4_32() {
  local lib; lib=$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 / && !l { l = $NF } END { print l }')
  [[ -n "$lib" ]] && ! grep -qa 'GLIBCXX_3\.4\.32' "$lib"
}

step "pack PagSharp and PagSharp.Cli $version into $feed"
# A separate artifacts folder: nothing built by the tests (bin/, obj/) is reused, and a concurrent build is not disturbed.
pack=(-c Release -o "$feed" --artifacts-path "$work/artifacts" -p:ContinuousIntegrationBuild=true)
# The tool packages are ReadyToRun-compiled per RID (PagSharp.Cli.csproj), which needs crossgen2 and each RID's runtime
# pack in the NuGet cache; the project's own restore does not fetch them (EnableRuntimePackDownload=false keeps plain
# builds from downloading three runtimes), so a fresh machine fetches them here first.
dotnet restore src/PagSharp.Cli/PagSharp.Cli.csproj --artifacts-path "$work/restore" -p:PublishReadyToRun=true -p:EnableRuntimePackDownload=true
dotnet pack src/PagSharp/PagSharp.csproj "${pack[@]}"
dotnet pack src/PagSharp.Cli/PagSharp.Cli.csproj "${pack[@]}"
ls -l "$feed"

lib_pkg=$feed/PagSharp.$version.nupkg
tool_pkg=$feed/PagSharp.Cli.$version.nupkg
tool_rid_pkg=$feed/PagSharp.Cli.$rid.$version.nupkg
for f in "$lib_pkg" "$tool_pkg" "$tool_rid_pkg"; do [[ -f "$f" ]] || fail "$f was not produced"; done

step "check the library package"
unzip -Z1 "$lib_pkg" > "$work/lib.files"
for f in lib/net10.0/PagSharp.dll lib/net10.0/PagSharp.xml README.md buildTransitive/PagSharp.targets \
         buildTransitive/PatchLibTorchSharp.cs models/mnist/config.json models/mnist/model.safetensors \
         models/mnist-classifier/model.safetensors; do
  grep -qx "$f" "$work/lib.files" || fail "PagSharp.$version.nupkg lacks $f"
done
! grep -q 'training' "$work/lib.files" || fail "PagSharp.$version.nupkg carries training files: $(grep training "$work/lib.files")"
unzip -p "$lib_pkg" PagSharp.nuspec > "$work/PagSharp.nuspec"
grep -q '<dependency id="TorchSharp" ' "$work/PagSharp.nuspec" || fail "PagSharp does not depend on TorchSharp"
! grep -qi 'id="TorchSharp-cpu"\|id="libtorch' "$work/PagSharp.nuspec" || fail "PagSharp depends on a native backend"

step "check the tool packages"
unzip -Z1 "$tool_rid_pkg" > "$work/tool.files"
tooldir=tools/net10.0/$rid
for f in "$tooldir/pag.dll" "$tooldir/DotnetToolSettings.xml" "$tooldir/models/mnist/config.json" \
         "$tooldir/models/mnist/model.safetensors" "$tooldir/models/mnist-classifier/model.safetensors"; do
  grep -qx "$f" "$work/tool.files" || fail "PagSharp.Cli.$rid.$version.nupkg lacks $f"
done
! grep -q 'training' "$work/tool.files" || fail "the tool package carries training files"
if [[ "$rid" == linux-* ]]; then
  unzip -q -o "$tool_rid_pkg" "$tooldir/libLibTorchSharp.so" -d "$work/tool-lib"
  is_weak "$work/tool-lib/$tooldir/libLibTorchSharp.so" || fail "the tool package's libLibTorchSharp.so is not patched"
  echo "libLibTorchSharp.so in the tool package: GLIBCXX_3.4.32 is weak"
fi

step "dotnet tool install PagSharp.Cli $version from the feed"
# --source: the feed only, so no other source can supply a package of the same name and version.
dotnet tool install --tool-path "$work/tools" --source "$feed" PagSharp.Cli --version "$version"
store=$work/tools/.store/pagsharp.cli/$version/pagsharp.cli.$rid/$version
cmp "$store/pagsharp.cli.$rid.$version.nupkg" "$tool_rid_pkg" || fail "the installed tool is not the package just packed"
pag=$work/tools/pag

step "run the installed tool (outside the repository)"
cd "$work"
"$pag" sample --count 4 --output "$work/out"
for i in 0 1 2 3; do [[ -s "$work/out/0000$i.png" ]] || fail "pag sample wrote no $work/out/0000$i.png"; done
[[ -s "$work/out/grid.png" ]] || fail "pag sample wrote no grid.png"
grep -q '"built-in mnist' "$work/out/run.json" || fail "pag sample did not use the built-in model"
"$pag" layers > "$work/layers.txt"
cat "$work/layers.txt"
grep -q 'middle_block' "$work/layers.txt" || fail "pag layers listed no middle_block layer"
# The classifier that ships with the tool (features for FID etc.); the 4 samples against themselves.
"$pag" eval --generated "$work/out" --reference "$work/out" --splits 2

step "pag serve from the installed tool: its page (inside pag.dll) and one job"
"$pag" serve --port 0 --threads 1 --output "$work/serve" > "$work/serve.log" 2>&1 &
serve_pid=$!
serve_fail() { kill -TERM "$serve_pid" 2>/dev/null || true; cat "$work/serve.log" >&2; fail "$@"; }
url=
for _ in $(seq 1 150); do
  url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/serve.log" | head -n 1 || true)
  [[ -n "$url" ]] && break
  sleep 0.2
done
[[ -n "$url" ]] || serve_fail "pag serve printed no URL"
page=$(curl -fsS "$url/") && grep -q '<script src="/app.js"' <<< "$page" || serve_fail "pag serve's page is not in the tool package"
script=$(curl -fsS "$url/app.js") && grep -q 'EventSource' <<< "$script" || serve_fail "pag serve's app.js is not in the tool package"
job=$(curl -fsS -X POST -H 'Content-Type: application/json' -d '{"count": 2, "steps": 5, "methods": ["none", "pag:2"]}' "$url/api/jobs") \
  || serve_fail "POST /api/jobs failed"
id=$(printf '%s' "$job" | grep -o '"id":"[0-9a-f]*"' | head -n 1 | cut -d'"' -f4)
status=
for _ in $(seq 1 300); do
  status=$(curl -fsS "$url/api/jobs/$id" | grep -o '"status":"[a-z]*"' | head -n 1 | cut -d'"' -f4)
  [[ "$status" == succeeded || "$status" == failed || "$status" == cancelled ]] && break
  sleep 0.2
done
[[ "$status" == succeeded ]] || serve_fail "pag serve's job $id ended as '$status'"
curl -fsS -o "$work/serve-grid.png" "$url/api/jobs/$id/files/grid.png" || serve_fail "grid.png of job $id did not download"
[[ -s "$work/serve/$id/grid.png" && -s "$work/serve/$id/run.json" ]] || serve_fail "job $id left no grid.png / run.json in $work/serve/$id"
kill -TERM "$serve_pid"
wait "$serve_pid" || fail "pag serve did not stop cleanly: $(cat "$work/serve.log")"
echo "pag serve: job $id succeeded; $(ls "$work/serve/$id" | wc -l) files"
cd "$repo"

step "build and run samples/QuickStart against the PagSharp package"
global_packages=$(dotnet nuget locals global-packages --list | sed 's/^global-packages: *//')
restore=(--packages "$work/packages" "-p:RestoreAdditionalProjectSources=$feed")
# Third-party packages come from the machine's NuGet cache when it has them (a fallback folder: no copy, no download),
# PagSharp always from the feed: a fresh packages folder, and no fallback at all if the cache holds this version.
if [[ -d "$global_packages" && ! -e "$global_packages/pagsharp/$version" ]]; then
  restore+=("-p:RestoreFallbackFolders=$global_packages")
fi
# Output and intermediate folders outside the work tree; the version just packed.
props=("-p:PagSharpVersion=$version" "-p:BaseIntermediateOutputPath=$work/quickstart/obj/" "-p:BaseOutputPath=$work/quickstart/bin/")
dotnet restore samples/QuickStart/QuickStart.csproj "${restore[@]}" "${props[@]}"
cmp "$work/packages/pagsharp/$version/pagsharp.$version.nupkg" "$lib_pkg" || fail "the sample restored a PagSharp other than the one just packed"
dotnet build samples/QuickStart/QuickStart.csproj -c Release --no-restore "${props[@]}"
out=$work/quickstart/bin/Release/net10.0
for f in models/mnist/config.json models/mnist/model.safetensors models/mnist-classifier/model.safetensors; do
  [[ -s "$out/$f" ]] || fail "the package's build targets did not copy $f into the sample's output"
done
if host_lacks_glibcxx_3_4_32; then
  lib=$(find "$out" -name libLibTorchSharp.so | head -n 1)
  [[ -n "$lib" ]] && is_weak "$lib" || fail "the package's build targets did not patch the sample's libLibTorchSharp.so"
  echo "libLibTorchSharp.so in the sample's output: GLIBCXX_3.4.32 is weak"
fi
cd "$work"
dotnet "$out/QuickStart.dll" "$work/quickstart.png"
[[ -s "$work/quickstart.png" ]] || fail "the sample wrote no PNG"
cd "$repo"

step "passed: PagSharp $version and PagSharp.Cli $version ($(du -h "$tool_rid_pkg" | cut -f1) for $rid)"
