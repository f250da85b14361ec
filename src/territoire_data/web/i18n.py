"""The portal's words in French (default) and English; the language comes from ?lang= or the `lang` cookie."""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("fr", "en")

MESSAGES: dict[str, tuple[str, str]] = {
    "skip": ("Aller au contenu", "Skip to content"),
    "nav_label": ("Navigation principale", "Main navigation"),
    "home": ("Accueil", "Home"),
    "api_docs": ("Documentation de l'API", "API documentation"),
    "dcat": ("Catalogue DCAT", "DCAT catalog"),
    "other_language": ("English", "Français"),
    "other_language_label": ("Read this site in English", "Lire ce site en français"),
    "search_label": ("Rechercher un jeu de données", "Search for a dataset"),
    "search_hint": ("Mots du titre, de la description ou des mots-clés", "Words of the title, description or keywords"),
    "search_button": ("Rechercher", "Search"),
    "filter_button": ("Appliquer les filtres", "Apply filters"),
    "filters": ("Filtres", "Filters"),
    "facet_theme": ("Thème", "Theme"),
    "facet_licence": ("Licence", "Licence"),
    "facet_publisher": ("Producteur", "Publisher"),
    "facet_format": ("Format", "Format"),
    "results": ("Résultats", "Results"),
    "n_results": ("{n} jeux de données", "{n} datasets"),
    "n_results_one": ("{n} jeu de données", "{n} dataset"),
    "no_results": ("Aucun jeu de données ne correspond à votre recherche.", "No dataset matches your search."),
    "reset": ("Effacer la recherche et les filtres", "Clear search and filters"),
    "previous": ("Page précédente", "Previous page"),
    "next": ("Page suivante", "Next page"),
    "pagination": ("Pagination", "Pagination"),
    "page_n_of": ("Page {n} sur {total}", "Page {n} of {total}"),
    "download": ("Télécharger", "Download"),
    "downloads": ("Téléchargements", "Downloads"),
    "metadata": ("Informations", "About this dataset"),
    "publisher": ("Producteur", "Publisher"),
    "contact": ("Contact", "Contact"),
    "licence": ("Licence", "Licence"),
    "no_licence": ("Aucune licence indiquée", "No licence given"),
    "themes": ("Thèmes", "Themes"),
    "keywords": ("Mots-clés", "Keywords"),
    "frequency": ("Fréquence de mise à jour", "Update frequency"),
    "temporal": ("Période couverte", "Time period covered"),
    "spatial": ("Zone couverte", "Area covered"),
    "spatial_bbox": ("Emprise (ouest, sud, est, nord)", "Extent (west, south, east, north)"),
    "created": ("Publié le", "Published on"),
    "modified": ("Mis à jour le", "Updated on"),
    "rows": ("Nombre de lignes", "Number of rows"),
    "schema": ("Schéma de données", "Data schema"),
    "identifier": ("Identifiant permanent", "Permanent identifier"),
    "from_to": ("du {start} au {end}", "from {start} to {end}"),
    "unknown": ("non renseigné", "not given"),
    "preview": ("Aperçu des données", "Data preview"),
    "preview_caption": ("Les {n} premières lignes sur {total}", "The first {n} rows of {total}"),
    "no_preview": ("Pas encore de données à afficher.", "No data to show yet."),
    "map": ("Carte", "Map"),
    "map_label": ("Carte des objets du jeu de données", "Map of the dataset's features"),
    "map_nojs": (
        "La carte demande JavaScript ; les données restent téléchargeables ci-dessus.",
        "The map needs JavaScript; the data can still be downloaded above.",
    ),
    "map_unavailable": (
        "La carte n'est pas disponible sur ce serveur (bibliothèques non installées).",
        "The map is not available on this server (libraries not installed).",
    ),
    "map_features": ("{n} objets affichés sur la carte.", "{n} features shown on the map."),
    "map_features_one": ("{n} objet affiché sur la carte.", "{n} feature shown on the map."),
    "chart": ("Évolution des mesures", "How the measurements changed"),
    "by_place": ("Mesures par lieu", "Measurements by place"),
    "sensor": ("Capteur", "Sensor"),
    "measure": ("Mesure", "Measurement"),
    "latest_value": ("Dernière valeur", "Latest value"),
    "measured": ("Mesurée", "Measured"),
    "period_nav": ("Période du graphique", "Period of the chart"),
    "period_means": (
        "Moyennes par quart d'heure (24 heures), par heure (7 et 30 jours) ou par jour (un an). Heures de Paris.",
        "Means per quarter hour (24 hours), per hour (7 and 30 days) or per day (a year). Paris time.",
    ),
    "download_measures": ("Télécharger les mesures", "Download the measurements"),
    "series_choice": ("Série", "Series"),
    "all_series": ("Toutes les séries du jeu de données", "Every series of the dataset"),
    "period_choice": ("Période", "Period"),
    "format_choice": ("Format", "Format"),
    "developers": ("Pour les développeurs : API", "For developers: APIs"),
    "latest": ("Dernières valeurs", "Latest values"),
    "datastream": ("Série", "Series"),
    "value": ("Valeur", "Value"),
    "time": ("Heure (Paris)", "Time (Paris)"),
    "no_recent": ("Aucune mesure sur cette période.", "No measurement over this period."),
    "api": ("Utiliser l'API", "Use the API"),
    "api_intro": (
        "Ces exemples lisent ce jeu de données depuis un programme.",
        "These examples read this dataset from a program.",
    ),
    "copy": ("Copier", "Copy"),
    "copied": ("Copié", "Copied"),
    "apis": ("Services", "Services"),
    "not_found": ("Page introuvable", "Page not found"),
    "not_found_text": (
        "Ce jeu de données n'existe pas ou n'est pas public.",
        "This dataset does not exist or is not public.",
    ),
    "back_home": ("Retour au catalogue", "Back to the catalog"),
    "footer": (
        "Données publiées avec territoire-data, logiciel libre. Aucun traceur, aucune ressource externe.",
        "Data published with territoire-data, free software. No tracker, no external resource.",
    ),
    "kind_sensors": ("Capteurs", "Sensors"),
    "kind_table": ("Tableau", "Table"),
    "access_api": ("Accès par API", "API access"),
}


def translator(lang: str) -> Callable[..., str]:
    """A `t(key, **values)` function for one language."""
    index = 1 if lang == "en" else 0

    def t(key: str, **values: object) -> str:
        # A real plural: French counts 0 and 1 as singular, English only 1.
        count = values.get("n")
        if isinstance(count, int) and f"{key}_one" in MESSAGES and (count == 1 or (count == 0 and index == 0)):
            key = f"{key}_one"
        text = MESSAGES[key][index]
        return text.format(**values) if values else text

    return t


def choose_language(query_lang: str | None, cookie_lang: str | None) -> str:
    for candidate in (query_lang, cookie_lang):
        if candidate in LANGUAGES:
            return candidate
    return "fr"
