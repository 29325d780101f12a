"""The look: Fusion with a dark palette and a small style sheet."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

BG = "#1b1d21"
PANEL = "#23262b"
CARD = "#2a2d33"
BORDER = "#363a41"
TEXT = "#e6e7ea"
MUTED = "#9aa0a8"
ACCENT = "#4c8dff"
DANGER = "#e0524d"
OK = "#3fb56b"
WARN = "#e5a93b"

QSS = f"""
QMainWindow, #central {{ background: {BG}; }}
QWidget {{ color: {TEXT}; font-size: 13px; }}
QToolTip {{ background: {CARD}; color: {TEXT}; border: 1px solid {BORDER}; padding: 4px 6px; }}
QMenuBar {{ background: {BG}; border-bottom: 1px solid {BORDER}; }}
QMenuBar::item:selected {{ background: {CARD}; }}
QMenu {{ background: {CARD}; border: 1px solid {BORDER}; padding: 4px; }}
QMenu::item {{ padding: 5px 24px 5px 12px; border-radius: 4px; }}
QMenu::item:selected {{ background: {ACCENT}; color: white; }}
QStatusBar {{ background: {PANEL}; border-top: 1px solid {BORDER}; }}
QStatusBar QLabel {{ padding: 0 8px; }}
#panelScroll, #panel {{ background: {BG}; }}
#card {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 10px; }}
#cardTitle {{ color: {MUTED}; font-size: 11px; font-weight: 600; letter-spacing: 1px; }}
#muted, #caption {{ color: {MUTED}; }}
#caption {{ font-size: 11px; }}
#portraitName {{ font-weight: 600; }}
#portraitThumb {{ background: {BG}; border: 1px solid {BORDER}; border-radius: 8px; }}
#recentPortraits {{ background: transparent; border: none; }}
#recentPortraits::item {{ border-radius: 6px; padding: 2px; }}
#recentPortraits::item:hover {{ background: {BORDER}; }}
#keycap {{ background: {BG}; border: 1px solid {BORDER}; border-radius: 4px; padding: 1px 6px;
           font-family: monospace; font-size: 12px; color: {TEXT}; }}
#sliderValue {{ color: {MUTED}; }}
#preview {{ border-radius: 10px; }}

QPushButton {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 6px;
               padding: 6px 14px; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:pressed {{ background: {BORDER}; }}
QPushButton:disabled {{ color: #6b7078; border-color: {CARD}; }}
QPushButton:checked {{ background: {DANGER}; border-color: {DANGER}; color: white; }}
#startButton {{ background: {ACCENT}; border-color: {ACCENT}; color: white; font-weight: 600;
                min-width: 92px; }}
#startButton:hover {{ background: #6aa0ff; }}
#startButton[running="true"] {{ background: {CARD}; border-color: {DANGER}; color: {DANGER}; }}
#linkButton {{ background: transparent; border: none; color: {ACCENT}; padding: 0;
               text-align: left; }}
#linkButton:hover {{ text-decoration: underline; }}

QComboBox {{ background: {BG}; border: 1px solid {BORDER}; border-radius: 6px; padding: 4px 8px; }}
QComboBox:hover {{ border-color: {ACCENT}; }}
QComboBox QAbstractItemView {{ background: {CARD}; border: 1px solid {BORDER};
                               selection-background-color: {ACCENT}; }}
QCheckBox {{ spacing: 8px; }}
QSlider::groove:horizontal {{ height: 4px; background: {BORDER}; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: {TEXT}; width: 14px; height: 14px; margin: -5px 0;
                              border-radius: 7px; }}
QScrollBar:vertical {{ background: transparent; width: 8px; }}
QScrollBar::handle:vertical {{ background: {BORDER}; border-radius: 4px; min-height: 24px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ height: 0; width: 0; }}
QScrollBar:horizontal {{ background: transparent; height: 6px; }}
QScrollBar::handle:horizontal {{ background: {BORDER}; border-radius: 3px; }}

#vcamStatus {{ color: {MUTED}; }}
#vcamStatus[state="on"] {{ color: {OK}; font-weight: 600; }}
#vcamStatus[state="error"] {{ color: {WARN}; }}

#banner {{ border-radius: 8px; border: 1px solid {BORDER}; background: {CARD}; }}
#banner[level="error"] {{ background: #3a2324; border-color: #6b3434; }}
#banner[level="warning"] {{ background: #3a3122; border-color: #6b5630; }}
#banner[level="info"] {{ background: #22303f; border-color: #2f4d6d; }}
#banner QLabel {{ background: transparent; }}
#bannerIcon {{ font-size: 15px; }}
#banner[level="error"] #bannerIcon {{ color: {DANGER}; }}
#banner[level="warning"] #bannerIcon {{ color: {WARN}; }}
#banner[level="info"] #bannerIcon {{ color: {ACCENT}; }}
#bannerMessage {{ font-weight: 600; }}
#bannerHint {{ color: #c5c8ce; }}
#bannerAction {{ background: rgba(255,255,255,0.06); padding: 4px 10px; }}
#bannerClose {{ border: none; color: {MUTED}; padding: 2px 4px; }}
#bannerClose:hover {{ color: {TEXT}; }}
"""


def apply_style(app: QApplication) -> None:
    app.setStyle("Fusion")
    pal = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, BG), (QPalette.ColorRole.WindowText, TEXT),
        (QPalette.ColorRole.Base, BG), (QPalette.ColorRole.AlternateBase, PANEL),
        (QPalette.ColorRole.Text, TEXT), (QPalette.ColorRole.Button, CARD),
        (QPalette.ColorRole.ButtonText, TEXT), (QPalette.ColorRole.Highlight, ACCENT),
        (QPalette.ColorRole.HighlightedText, "#ffffff"), (QPalette.ColorRole.ToolTipBase, CARD),
        (QPalette.ColorRole.ToolTipText, TEXT), (QPalette.ColorRole.PlaceholderText, MUTED),
    ):
        pal.setColor(role, QColor(color))
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#6b7078"))
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#6b7078"))
    app.setPalette(pal)
    app.setStyleSheet(QSS)
