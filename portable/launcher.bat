@echo off
rem One click on Windows: create/reuse .venv next to the app, install what it needs (offline from
rem wheelhouse\ in a bundle; otherwise the CUDA PyTorch build when nvidia-smi finds a GPU, else the
rem CPU build), check that torch imports, then start LoRA Forge. Arguments go to launcher.py.
setlocal EnableExtensions EnableDelayedExpansion
set "APP_DIR=%~dp0.."
pushd "%APP_DIR%" >nul
set "APP_DIR=%CD%"
popd >nul
if not defined LORAFORGE_VENV set "LORAFORGE_VENV=%APP_DIR%\.venv"
set "VPY=%LORAFORGE_VENV%\Scripts\python.exe"
set "WHEELHOUSE=%APP_DIR%\wheelhouse"

set "PY="
where py >nul 2>nul && py -3.11 -c "import sys" >nul 2>nul && set "PY=py -3.11"
if not defined PY where py >nul 2>nul && py -3 -c "import sys; sys.exit(0 if (3,11) <= sys.version_info[:2] < (3,14) else 1)" >nul 2>nul && set "PY=py -3"
if not defined PY where python >nul 2>nul && python -c "import sys; sys.exit(0 if (3,11) <= sys.version_info[:2] < (3,14) else 1)" >nul 2>nul && set "PY=python"
if not defined PY (
  echo LoRA Forge needs Python 3.11-3.13. Install it from https://www.python.org/downloads/
  echo ^(tick "Add python.exe to PATH"^), then double-click this file again.
  pause
  exit /b 1
)

if defined LORAFORGE_TORCH (set "VARIANT=%LORAFORGE_TORCH%") else (
  if exist "%WHEELHOUSE%\TORCH_VARIANT" (set /p VARIANT=<"%WHEELHOUSE%\TORCH_VARIANT") else (
    set "VARIANT=cpu"
    where nvidia-smi >nul 2>nul && nvidia-smi -L >nul 2>nul && set "VARIANT=cuda"
  )
)

if not exist "%VPY%" (
  echo creating virtual environment in %LORAFORGE_VENV%
  %PY% -m venv "%LORAFORGE_VENV%" || (echo could not create the virtual environment & pause & exit /b 1)
)

rem the stamp changes when the requirement files or the torch build change
for /f %%h in ('certutil -hashfile "%APP_DIR%\requirements.txt" SHA256 ^| findstr /v ":"') do set "REQHASH=%%h"
set "STAMP=%LORAFORGE_VENV%\.loraforge-installed-%REQHASH:~0,16%-%VARIANT%"
if exist "%STAMP%" goto run

for /f "tokens=3 delims==" %%v in ('findstr /b "torch==" "%APP_DIR%\requirements.txt"') do set "TORCH_PIN=%%v"
if exist "%WHEELHOUSE%" (
  echo installing LoRA Forge's packages from the bundled wheelhouse ^(offline, torch %VARIANT%^)
  "%VPY%" -m pip install -q --no-index --find-links "%WHEELHOUSE%" -r "%APP_DIR%\requirements.txt" || goto failed
  "%VPY%" -m pip install -q --no-index --find-links "%WHEELHOUSE%" --no-deps -r "%APP_DIR%\requirements-nodeps.txt" || goto failed
) else (
  echo installing LoRA Forge's packages ^(torch %VARIANT% build; a few minutes the first time^)
  "%VPY%" -m pip install -q --upgrade pip
  if /i "%VARIANT%"=="cuda" (
    "%VPY%" -m pip install -q torch==%TORCH_PIN% --index-url https://download.pytorch.org/whl/cu128 || goto failed
  ) else (
    "%VPY%" -m pip install -q torch==%TORCH_PIN% || goto failed
  )
  "%VPY%" -m pip install -q -r "%APP_DIR%\requirements.txt" || goto failed
  "%VPY%" -m pip install -q --no-deps -r "%APP_DIR%\requirements-nodeps.txt" || goto failed
)
"%VPY%" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')" || (
  echo PyTorch was installed but does not import ^(see above^). Delete %LORAFORGE_VENV% and try again,
  echo or set LORAFORGE_TORCH=cpu to use the CPU build.
  pause
  exit /b 1
)
type nul > "%STAMP%"

:run
"%VPY%" "%APP_DIR%\launcher.py" %*
exit /b %ERRORLEVEL%

:failed
echo Installing the packages failed ^(see the messages above^). Check your internet connection
echo ^(or that wheelhouse\ is complete^) and run this again.
pause
exit /b 1
