@echo off
rem One click (Windows): sets up .venv on first run, then starts LoRA Forge.
call "%~dp0portable\launcher.bat" %*
